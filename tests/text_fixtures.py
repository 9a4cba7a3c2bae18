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


# ------------------------------------------------------------------ the original distributions


def write_aclimdb(root: Path, splits: dict[str, list[dict]]) -> Path:
    """An ``aclImdb/`` tree as extracted from ``aclImdb_v1.tar.gz``: ``{split: rows}`` rows of
    :func:`sentiment_rows` become ``root/SPLIT/{pos,neg}/ID_RATING.txt``, each text with a
    ``<br /><br />`` inside, as the real reviews have; plus the files a reader must ignore
    (``train/unsup``, ``imdb.vocab``, ``labeledBow.feat``, ``urls_*.txt``)."""
    for split, rows in splits.items():
        for i, row in enumerate(rows):
            label = "pos" if row["label"] in (1, "pos") else "neg"
            rating = 8 + i % 3 if label == "pos" else 1 + i % 4
            path = root / split / label / f"{i}_{rating}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(row["text"].replace(" ", "<br /><br />", 1), encoding="utf-8")
        (root / split / "labeledBow.feat").write_text("0:9 1:1\n")
        (root / split / "urls_pos.txt").write_text("http://www.imdb.com/title/tt0000001/\n")
    (root / "train" / "unsup").mkdir(parents=True, exist_ok=True)
    (root / "train" / "unsup" / "0_0.txt").write_text("an unlabelled review", encoding="utf-8")
    (root / "imdb.vocab").write_text("the\nand\n")
    return root


QQP_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"


def write_glue_qqp(root: Path, train: list[str], dev: list[str]) -> Path:
    """GLUE's ``QQP/`` folder: ``train.tsv`` and ``dev.tsv`` with the header and the given
    lines as they are (so a test can break them), and an unlabelled ``test.tsv``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train", train), ("dev", dev)):
        (root / f"{name}.tsv").write_text("".join(f"{line}\n" for line in [QQP_HEADER, *lines]))
    (root / "test.tsv").write_text("id\tquestion1\tquestion2\n0\tis this a test?\tis it?\n")
    return root


def qqp_lines(rows: list[dict], start: int = 0) -> list[str]:
    """:func:`pair_rows` rows (``question1``/``question2``/``label``) as GLUE TSV lines."""
    return [
        f"{start + i}\t{2 * i + 1}\t{2 * i + 2}\t{row['question1']}\t{row['question2']}\t"
        f"{row['label']}"
        for i, row in enumerate(rows)
    ]


def snli_line(premise: str, hypothesis: str, gold: str, labels: list[str] | None = None) -> str:
    """One line of ``snli_1.0_*.jsonl`` with all the original fields."""
    return json.dumps(
        {
            "annotator_labels": labels or [gold],
            "captionID": "3416050480.jpg#4",
            "gold_label": gold,
            "pairID": "3416050480.jpg#4r1n",
            "sentence1": premise,
            "sentence1_binary_parse": f"( {premise} )",
            "sentence1_parse": f"(ROOT (S {premise}))",
            "sentence2": hypothesis,
            "sentence2_binary_parse": f"( {hypothesis} )",
            "sentence2_parse": f"(ROOT (S {hypothesis}))",
        }
    )


def write_snli(root: Path, splits: dict[str, list[str]]) -> Path:
    """Stanford's ``snli_1.0/`` folder: ``{"train"|"dev"|"test": lines}`` of :func:`snli_line`
    as ``snli_1.0_SPLIT.jsonl``."""
    root.mkdir(parents=True, exist_ok=True)
    for split, lines in splits.items():
        (root / f"snli_1.0_{split}.jsonl").write_text("".join(f"{line}\n" for line in lines))
    return root
