"""Small text classification fixture files, written by the tests in each schema and format."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

POSITIVE = ["a great film", "wonderful acting and a great story", "i loved it", "superb fun"]
NEGATIVE = ["a bad film", "boring and awful", "i hated it", "dull terrible plot"]


def sentiment_rows(n: int, labels_as_names: bool = False) -> list[dict]:
    """``n`` rows ``{"text", "label"}`` alternating positive (1, "pos") and negative."""
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = (POSITIVE if positive else NEGATIVE)[i // 2 % 4]
        label = ("pos" if positive else "neg") if labels_as_names else int(positive)
        rows.append({"text": f"{words} number {i}", "label": label})
    return rows


def pair_rows(n: int, columns: tuple[str, str], num_classes: int, names=None) -> list[dict]:
    """``n`` pair rows; the label is a function of the two texts, so it can be learnt."""
    a, b = columns
    rows = []
    for i in range(n):
        label = i % num_classes
        first = f"what is the colour of sky {i % 5}"
        second = [first, "how do fish swim", "no birds fly here"][label]
        rows.append({a: first, b: second, "label": names[label] if names else label})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` to ``path`` as ``.jsonl``, ``.csv`` or ``.parquet`` by its suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path, index=False)
    else:
        raise ValueError(f"unknown suffix {path.suffix}")
    return path
