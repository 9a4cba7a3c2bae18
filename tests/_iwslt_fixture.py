"""Tiny IWSLT-format fixture: line-aligned train/tst2012/tst2013 files of a toy En->Vi language."""

from __future__ import annotations

import random
from pathlib import Path

LEXICON = {
    "i": "tôi",
    "you": "bạn",
    "we": "chúng tôi",
    "see": "thấy",
    "like": "thích",
    "have": "có",
    "a": "một",
    "big": "lớn",
    "small": "nhỏ",
    "house": "ngôi nhà",
    "dog": "con chó",
    "cat": "con mèo",
    "book": "cuốn sách",
    "today": "hôm nay",
    "now": "bây giờ",
}
SUBJECTS, VERBS = ["i", "you", "we"], ["see", "like", "have"]
ADJECTIVES, NOUNS, TIMES = ["big", "small"], ["house", "dog", "cat", "book"], ["today", "now"]


def sentence_pair(rng: random.Random) -> tuple[str, str]:
    """An English sentence and its (word-by-word, adjective after noun) Vietnamese version."""
    s, v, adj, n = (
        rng.choice(SUBJECTS),
        rng.choice(VERBS),
        rng.choice(ADJECTIVES),
        rng.choice(NOUNS),
    )
    en = [s, v, "a", adj, n]
    vi = [LEXICON[s], LEXICON[v], LEXICON["a"], LEXICON[n], LEXICON[adj]]
    if rng.random() < 0.5:
        t = rng.choice(TIMES)
        en.append(t)
        vi.append(LEXICON[t])
    return " ".join(en) + " .", " ".join(vi) + " ."


def write_iwslt(
    folder: Path, n_train: int = 64, n_eval: int = 8, seed: int = 0, extra_train: int = 0
) -> Path:
    """Write the six files into ``folder`` and return it."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("tst2012", n_eval), ("tst2013", n_eval)):
        pairs = [sentence_pair(rng) for _ in range(n)]
        if stem == "train":  # the real train files hold empty lines too (inside, not at the end)
            pairs[n // 2 : n // 2] = [("", "")] * extra_train
        (folder / f"{stem}.en").write_text("\n".join(p[0] for p in pairs) + "\n", encoding="utf-8")
        (folder / f"{stem}.vi").write_text("\n".join(p[1] for p in pairs) + "\n", encoding="utf-8")
    return folder
