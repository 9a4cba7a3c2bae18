"""IWSLT'15 English-Vietnamese: the standard splits, subword tokenisers and a LightningDataModule.

Splits (Luong & Manning 2015): ``train`` (133k pairs), ``tst2012`` (validation, 1,553 pairs) and
``tst2013`` (test, 1,268 pairs), as tokenised, line-aligned text (Moses-tokenised: punctuation
split off, ``'`` and ``"`` written as ``&apos;`` and ``&quot;``; read as it is).

Sources, in order:

* ``data_dir`` holding ``train.en train.vi tst2012.en tst2012.vi tst2013.en tst2013.vi`` (the
  files of https://nlp.stanford.edu/projects/nmt/data/iwslt15.en-vi/), UTF-8, one sentence per
  line (lines end at ``"\n"``, as ``wc -l`` counts them; a ``"\r"`` inside a line is text; a
  byte order mark and blank lines at the end of a file that pair no sentence are ignored);
* otherwise the Hugging Face hub dataset ``IWSLT/mt_eng_vietnamese``, config ``iwslt2015-en-vi``
  (splits ``train``/``validation``/``test``; its loader is known to map *both* ``validation`` and
  ``test`` to tst2013, see the dataset's discussion #2: when the two are the same, the
  validation split is held out of train instead (:func:`hold_out_validation`, a warning says
  so), so that the test set never picks the checkpoint; pass ``--data-dir`` for tst2012).
  The config keys ``hf_dataset``, ``hf_config`` and ``hf_revision`` change it. Where the
  repository holds a loading script, which ``datasets`` >= 4 does not run, the data
  is read from the hub's parquet export instead (revision ``refs/convert/parquet``, folder
  ``hf_config``), as it is when ``hf_revision`` names that branch.

Tokenisation: one BPE tokeniser per language (``tokenizers``), trained on that side of the
training split, with the ``Metaspace`` pre-tokeniser/decoder so that decoding gives back the
spacing of the text. Special ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3. A source is
its tokens followed by ``</s>``; the decoder reads ``<s> y`` and predicts ``y </s>``.

Length handling (documented contract, tested):

* training pairs with an empty side, or with more than ``max_source_length`` source tokens or
  ``max_target_length`` target tokens, are dropped (the usual filtering);
* validation/test sources longer than ``max_source_length`` are truncated to it (every reference
  stays in the BLEU score); validation/test targets are never truncated;
* :func:`encode_source` (used by ``plmu translate``) raises ``ValueError`` for an empty or an
  over-long sentence instead of silently dropping text.
"""

from __future__ import annotations

import logging
import random
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch.utils.data import BatchSampler, Dataset, Sampler

from plmu.data import DataError, check_text, not_utf8
from plmu.legendre import _check_positive_int
from plmu.training.datamodule import EpochRandomSampler, SplitDataModule

__all__ = [
    "BOS",
    "EOS",
    "FILES",
    "PAD",
    "SPECIAL_TOKENS",
    "UNK",
    "IWSLTDataModule",
    "LengthBucketSampler",
    "TranslationBatch",
    "TranslationDataset",
    "collate",
    "encode_source",
    "hold_out_validation",
    "load_hub",
    "read_data_dir",
    "train_tokenizer",
]

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]
SPLITS = {"train": "train", "validation": "tst2012", "test": "tst2013"}
FILES = tuple(f"{stem}.{lang}" for stem in SPLITS.values() for lang in ("en", "vi"))
HUB_NAME, HUB_CONFIG = "IWSLT/mt_eng_vietnamese", "iwslt2015-en-vi"
STANFORD_URL = "https://nlp.stanford.edu/projects/nmt/data/iwslt15.en-vi/"
PARQUET_EXPORT = "refs/convert/parquet"  # the hub's parquet export branch of a dataset
TST2012_PAIRS = 1553  # the size of the standard validation split

log = logging.getLogger(__name__)

Pairs = tuple[list[str], list[str]]  # (english lines, vietnamese lines), aligned


# ---------------------------------------------------------------------------------- reading


def _read_lines(path: Path) -> list[str]:
    """The lines of ``path``, ended by ``"\n"`` only (as ``wc -l`` and the hub's loader count
    them; ``"\r\n"`` ends are stripped): Python's default universal newlines would also end a
    line at a carriage return inside it, and misalign the two sides."""
    try:  # utf-8-sig: a byte order mark (a Windows editor's) is not part of the first line
        with open(path, encoding="utf-8-sig", newline="\n") as f:
            return [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def _drop_trailing_blanks(en: list[str], vi: list[str]) -> Pairs:
    """The two sides without the blank lines at their ends that are no pair's: those past the
    other file's last line, then those blank on both sides (not sentences; the hub's copy has
    none). A last pair with one side empty stays."""
    for longer, shorter in ((en, vi), (vi, en)):
        while len(longer) > len(shorter) and not longer[-1].strip():
            longer.pop()
    while en and vi and len(en) == len(vi) and not en[-1].strip() and not vi[-1].strip():
        en.pop()
        vi.pop()
    return en, vi


def read_data_dir(data_dir: Path | str, splits: Iterable[str] = tuple(SPLITS)) -> dict[str, Pairs]:
    """Read the six line-aligned files of ``data_dir``, or only those of ``splits`` (of
    ``"train"``, ``"validation"``, ``"test"``; the others need not exist).

    Returns:
        ``{"train": (en, vi), "validation": (en, vi), "test": (en, vi)}`` (the ``splits``
        asked for), lists of lines.

    Raises:
        DataError (a ValueError): a file is missing or not UTF-8 (naming its first bad line),
            the two sides of a split differ in line count, or a split holds no sentence.
    """
    data_dir = Path(data_dir)
    wanted = set(splits)
    splits = [split for split in SPLITS if split in wanted]
    needed = [f"{SPLITS[split]}.{lang}" for split in splits for lang in ("en", "vi")]
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"data_dir {str(data_dir)!r} is a file, not a directory (--data-dir)")
    missing = [name for name in needed if not (data_dir / name).is_file()]
    if missing:
        raise DataError(
            f"data_dir {str(data_dir)!r} lacks {', '.join(missing)}; IWSLT'15 en-vi needs the "
            f"line-aligned files {', '.join(needed)}"
        )
    out: dict[str, Pairs] = {}
    for split in splits:
        stem = SPLITS[split]
        en, vi = _drop_trailing_blanks(
            _read_lines(data_dir / f"{stem}.en"), _read_lines(data_dir / f"{stem}.vi")
        )
        if len(en) != len(vi):
            raise DataError(
                f"{stem}.en has {len(en)} lines but {stem}.vi has {len(vi)} in {str(data_dir)!r}; "
                "the files must be line-aligned"
            )
        if not any(line.strip() for line in (*en, *vi)):
            raise DataError(
                f"{stem}.en and {stem}.vi in {str(data_dir)!r} hold no sentence (empty files "
                f"or empty lines only)"
            )
        out[split] = (en, vi)
    return out


def load_hub(
    name: str = HUB_NAME, config: str | None = HUB_CONFIG, revision: str | None = None
) -> dict[str, Pairs]:
    """Load the three splits from the Hugging Face hub with ``datasets.load_dataset``.

    Raises:
        DataError (a ValueError): one line naming the dataset and the files ``--data-dir``
            needs instead (e.g. offline).
    """
    import datasets

    try:
        if revision == PARQUET_EXPORT:
            ds = _load_parquet_export(name, config)
        else:
            try:
                ds = datasets.load_dataset(name, config, revision=revision)
            except RuntimeError as err:
                # datasets >= 4 runs no loading scripts; the hub's parquet export has the data
                if "scripts are no longer supported" not in str(err) or revision is not None:
                    raise
                ds = _load_parquet_export(name, config)
        out: dict[str, Pairs] = {}
        for split in SPLITS:
            # the hub's loader splits each file on "\n", so every split ends with an empty
            # pair (133,318 / 1,269 rows for the files' 133,317 / 1,268 lines): not a sentence
            rows = [r for r in ds[split]["translation"] if r["en"].strip() or r["vi"].strip()]
            out[split] = ([r["en"] for r in rows], [r["vi"] for r in rows])
    except Exception as err:  # network, missing split, changed schema: one clear line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"could not load IWSLT'15 en-vi from the hub ({name}, {config}): {reason}; "
            f"without the hub (e.g. offline) pass --data-dir DIR holding {', '.join(FILES)} "
            f"(from {STANFORD_URL})"
        ) from None
    return out


def _load_parquet_export(name: str, config: str | None) -> Any:
    """The hub's parquet export of a script dataset: one folder per config
    (``CONFIG/SPLIT/0000.parquet``), so the config is a ``data_dir``, not a config name."""
    import datasets

    return datasets.load_dataset(name, revision=PARQUET_EXPORT, data_dir=config)


def hold_out_validation(data: dict[str, Pairs], seed: int) -> dict[str, Pairs]:
    """``data`` with its validation split replaced by pairs held out of train.

    For a hub copy whose validation split is its test split (tst2013 twice, see the module
    docstring): validating on it would choose ``best.ckpt`` by the test set. The held-out pairs
    (tst2012's 1,553, or a tenth of a smaller train split), drawn with ``seed`` from the pairs
    with two non-empty sides, leave train; the test split is kept. A warning says so.
    """
    en, vi = data["train"]
    pairs = [i for i, (a, b) in enumerate(zip(en, vi)) if a.strip() and b.strip()]
    size = min(TST2012_PAIRS, max(1, len(pairs) // 10))
    held = set(random.Random(seed).sample(pairs, size))
    log.warning(
        "the hub dataset's validation split is its test split (tst2013); validating on %d "
        "training pairs held out with seed %d instead (pass --data-dir for tst2012)",
        size, seed,
    )  # fmt: skip
    keep = [i for i in range(len(en)) if i not in held]
    return {
        "train": ([en[i] for i in keep], [vi[i] for i in keep]),
        "validation": ([en[i] for i in sorted(held)], [vi[i] for i in sorted(held)]),
        "test": data["test"],
    }


# ------------------------------------------------------------------------------ tokenizers


def train_tokenizer(lines: Sequence[str], vocab_size: int) -> Tokenizer:
    """A BPE tokeniser (Metaspace pre-tokeniser and decoder, NFC normalisation) for ``lines``."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tok.train_from_iterator(lines, trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"special token {t} got id {tok.token_to_id(t)}, expected {i}")
    return tok


def encode_source(tokenizer: Tokenizer, sentence: str, max_length: int) -> list[int]:
    """Token ids of one source sentence followed by ``</s>``, for translation.

    Raises:
        TypeError: ``sentence`` is not a string.
        ValueError: ``sentence`` is empty (or only spaces), or has more than ``max_length``
            subword tokens (the model's ``max_source_length``).
    """
    if not isinstance(sentence, str):
        raise TypeError(f"sentence must be a str, got {type(sentence).__name__}")
    if not sentence.strip():
        raise ValueError("sentence is empty; give an English sentence to translate")
    ids = tokenizer.encode(check_text(sentence, "sentence").strip()).ids
    if len(ids) > max_length:
        raise ValueError(
            f"sentence has {len(ids)} subword tokens, more than max_source_length={max_length} "
            "of this model; split it into shorter sentences"
        )
    return [*ids, EOS]


# ---------------------------------------------------------------------------------- dataset


class TranslationDataset(Dataset):
    """Tokenised pairs: item ``i`` is ``(source ids + </s>, target ids, reference text, i)``."""

    def __init__(self, sources: list[list[int]], targets: list[list[int]], refs: list[str]):
        if not len(sources) == len(targets) == len(refs):
            raise ValueError("sources, targets and refs must have the same length")
        self.sources, self.targets, self.refs = sources, targets, refs

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[list[int], list[int], str, int]:
        return self.sources[i], self.targets[i], self.refs[i], i


@dataclass
class TranslationBatch:
    """A padded batch (right padding with ``PAD``).

    Attributes:
        src: ``(batch, S)`` source ids ending in ``</s>``; ``src_lengths`` ``(batch,)``.
        tgt_in: ``(batch, T)`` decoder input ``<s> y``; ``tgt_out`` ``(batch, T)`` ``y </s>``.
        refs: the reference translations (text), for BLEU.
        indices: the pairs' positions in their dataset (``None`` when the items had none), to
            put results gathered from several processes back in order.
    """

    src: torch.Tensor
    src_lengths: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    refs: list[str]
    indices: list[int] | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TranslationBatch:
        """The batch with its tensors on ``device`` (``non_blocking`` as ``Tensor.to``)."""
        return TranslationBatch(
            *(t.to(device, non_blocking=non_blocking) for t in self._tensors()),
            self.refs,
            self.indices,
        )

    def pin_memory(self) -> TranslationBatch:
        """The batch with its tensors in page-locked memory (what a ``DataLoader`` with
        ``pin_memory=True`` calls: otherwise it would leave this type unpinned)."""
        return TranslationBatch(*(t.pin_memory() for t in self._tensors()), self.refs, self.indices)

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return self.src, self.src_lengths, self.tgt_in, self.tgt_out


def _pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate(items: list[tuple]) -> TranslationBatch:
    """Pad a list of dataset items ``(source, target, reference[, index])`` into a
    :class:`TranslationBatch` (``indices`` only when every item has its index)."""
    src = [item[0] for item in items]
    tgt = [item[1] for item in items]
    return TranslationBatch(
        src=_pad(src),
        src_lengths=torch.tensor([len(s) for s in src], dtype=torch.long),
        tgt_in=_pad([[BOS, *t] for t in tgt]),
        tgt_out=_pad([[*t, EOS] for t in tgt]),
        refs=[item[2] for item in items],
        indices=[item[3] for item in items] if all(len(i) > 3 for i in items) else None,
    )


class LengthBucketSampler(BatchSampler):
    """Batches of similar length (less padding), in a new order every epoch.

    The indices come from ``sampler`` (an :class:`~plmu.training.datamodule.EpochRandomSampler`;
    under DDP Lightning swaps in a ``DistributedSampler``, so each process buckets its own
    shard). They are sorted by length inside pools of ``pool`` batches, cut into batches of
    ``batch_size`` and the batches are shuffled (``seed`` + epoch). The epoch is the one
    Lightning gives ``sampler`` (``set_epoch``, also after a resume, so a resumed run sees the
    batches of the uninterrupted run) when it has one, else a count of the passes.

    Args:
        sampler: yields dataset indices.
        batch_size: items per batch; drop_last: drop batches shorter than ``batch_size``.
        lengths: ``lengths[i]`` is the length of item ``i``.
        pool: batches per sorting pool; seed: of the batch order.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sequence[int],
        batch_size: int,
        drop_last: bool,
        lengths: Sequence[int],
        pool: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = list(lengths)
        self.pool = pool
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = getattr(self.sampler, "epoch", None)  # read before the sampler's pass
        if epoch is None:
            epoch, self.epoch = self.epoch, self.epoch + 1
        rng = random.Random(self.seed + epoch)
        order = list(self.sampler)
        size = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size], key=self.lengths.__getitem__)
            for i in range(0, len(chunk), self.batch_size):
                batch = chunk[i : i + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        rng.shuffle(batches)
        yield from batches


# ------------------------------------------------------------------------------ datamodule


class IWSLTDataModule(SplitDataModule):
    """IWSLT'15 En-Vi for Lightning.

    Args:
        data_dir: folder with the six line-aligned files, or ``None`` for the hub dataset.
        batch_size: pairs per batch.
        vocab_size: BPE vocabulary size of each language.
        max_source_length, max_target_length: subword limits (see the module docstring).
        saved: ``saved_state()`` of a trained datamodule; its tokenisers are reused, none is
            trained, and nothing is read until :meth:`setup`.
        hf_dataset, hf_config, hf_revision: the hub dataset when ``data_dir`` is ``None``.
        seed: seeds the shuffling of training batches.
        num_workers: DataLoader worker processes.

    :meth:`setup` tokenises only the splits its stage needs (``"fit"``: train and validation,
    ``"validate"``: validation, ``"test"``/``"predict"``: test, ``None``: all three) into
    ``datasets`` (``{"train", "validation", "test"}``), also served as ``train_set``,
    ``val_set`` and ``test_set`` (``None`` until tokenised).
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        batch_size: int = 64,
        vocab_size: int = 8000,
        max_source_length: int = 100,
        max_target_length: int = 100,
        saved: dict | None = None,
        hf_dataset: str = HUB_NAME,
        hf_config: str | None = HUB_CONFIG,
        hf_revision: str | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        # a wrong type is a TypeError naming the argument, a value below 1 a ValueError
        batch_size = _check_positive_int(batch_size, "batch_size")
        vocab_size = _check_positive_int(vocab_size, "vocab_size")
        max_source_length = _check_positive_int(max_source_length, "max_source_length")
        max_target_length = _check_positive_int(max_target_length, "max_target_length")
        super().__init__(batch_size, num_workers, seed=seed)
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.vocab_size = vocab_size
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.hub = (hf_dataset, hf_config, hf_revision)
        self.src_tokenizer: Tokenizer | None = None
        self.tgt_tokenizer: Tokenizer | None = None
        if saved is not None:
            try:
                self.src_tokenizer = Tokenizer.from_str(saved["src_tokenizer"])
                self.tgt_tokenizer = Tokenizer.from_str(saved["tgt_tokenizer"])
            except KeyError as err:
                raise ValueError(f"saved state lacks {err.args[0]!r}") from None
        self._raw: dict[str, Pairs] | None = None
        self.datasets: dict[str, TranslationDataset] = {}
        self.dropped_train_pairs = 0
        self.truncated_sources: dict[str, int] = {}

    # -- state

    def saved_state(self) -> dict:
        """The tokenisers as JSON strings, ``{"src_tokenizer", "tgt_tokenizer"}``."""
        if self.src_tokenizer is None or self.tgt_tokenizer is None:
            raise RuntimeError("the tokenisers are trained in setup(); call it first")
        return {
            "src_tokenizer": self.src_tokenizer.to_str(),
            "tgt_tokenizer": self.tgt_tokenizer.to_str(),
        }

    def state_dict(self) -> dict:
        """Nothing: the tokenisers are stored once, in ``checkpoint["plmu"]["saved"]``
        (:meth:`saved_state`), which the runner gives to :meth:`load_state_dict` before a
        resumed fit. (Checkpoints written before also held them here, in Lightning's datamodule
        state; Lightning still hands that copy to :meth:`load_state_dict` on resuming them.)"""
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """A resumed fit: the checkpoint's tokenisers (its ``saved``, or the Lightning state of
        a checkpoint written before that was empty) replace the ones ``setup`` trained again
        (which differ when the training lines or the ``tokenizers`` release changed), and the
        splits already tokenised are tokenised again with them. Decode through
        :meth:`decode_target` (not a tokeniser's bound ``decode``) to follow the swap."""
        if "src_tokenizer" not in state_dict:
            return
        if self.src_tokenizer is not None and state_dict == self.saved_state():
            return
        self.src_tokenizer = Tokenizer.from_str(state_dict["src_tokenizer"])
        self.tgt_tokenizer = Tokenizer.from_str(state_dict["tgt_tokenizer"])
        if self.datasets:
            log.warning("resuming with the checkpoint's tokenisers")
            raw = self._load(self.datasets)
            for split in list(self.datasets):
                self.datasets[split] = self._tokenize(split, *raw[split])
            self.train_set = self.datasets.get("train")
            self.val_set = self.datasets.get("validation")
            self.test_set = self.datasets.get("test")

    def decode_target(self, ids: list[int]) -> str:
        """Target token ids -> text, with the current target tokeniser: a hypothesis as it is
        scored and printed. An unknown word (``<unk>``, which the model may emit) is written
        ``<unk>``, as NMT systems write it (in tokenised BLEU one word that matches no reference
        word: Moses-escaped text writes ``<`` as ``&lt;``); ``<pad>``, ``<s>`` and ``</s>`` are
        left out. (The tokeniser's own ``decode`` skips every special token, ``<unk>`` too: the
        hypothesis lost a word.)"""
        words = [i for i in ids if i not in (PAD, BOS, EOS)]
        return self._tokenizers()[1].decode(words, skip_special_tokens=False)

    @property
    def src_vocab_size(self) -> int:
        return self._tokenizers()[0].get_vocab_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self._tokenizers()[1].get_vocab_size()

    def _tokenizers(self) -> tuple[Tokenizer, Tokenizer]:
        if self.src_tokenizer is None or self.tgt_tokenizer is None:
            raise RuntimeError("the tokenisers are trained in setup('fit'); call it first")
        return self.src_tokenizer, self.tgt_tokenizer

    # -- data

    def _load(self, splits: Iterable[str] = tuple(SPLITS)) -> dict[str, Pairs]:
        """The raw splits, ``splits`` among them: from ``data_dir`` each split's files are read
        the first time it is asked for; the hub gives all three at once."""
        if self.data_dir is not None:
            raw = self._raw or {}
            missing = [split for split in splits if split not in raw]
            if missing:
                self._raw = {**raw, **read_data_dir(self.data_dir, missing)}
            return self._raw or {}
        if self._raw is None:
            self._raw = load_hub(*self.hub)
            if self._raw["validation"] == self._raw["test"]:
                self._raw = hold_out_validation(self._raw, self.seed)
        return self._raw

    def _trained(self) -> bool:
        return self.src_tokenizer is not None and self.tgt_tokenizer is not None

    def prepare_data(self) -> None:
        """Download (hub) or check (``data_dir``) the data once: from ``data_dir`` the six
        files, or with a checkpoint's tokenisers (``saved``) the test split's alone, so
        ``plmu evaluate`` needs no training or validation file (a later ``setup("fit")``
        reads them)."""
        self._load(("test",) if self._trained() else tuple(SPLITS))

    def setup(self, stage: str | None = None) -> None:
        """Train the tokenisers (unless loaded) and tokenise the splits ``stage`` needs; from
        ``data_dir`` only those splits are read (and train, to train the tokenisers)."""
        wanted = {
            "fit": ("train", "validation"),
            "validate": ("validation",),
            "test": ("test",),
            "predict": ("test",),
        }.get(stage or "", tuple(SPLITS))
        raw = self._load(wanted if self._trained() else ("train", *wanted))
        if not self._trained():
            en, vi = raw["train"]
            self.src_tokenizer = train_tokenizer(en, self.vocab_size)
            self.tgt_tokenizer = train_tokenizer(vi, self.vocab_size)
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self._tokenize(split, *raw[split])
        self.train_set = self.datasets.get("train")
        self.val_set = self.datasets.get("validation")
        self.test_set = self.datasets.get("test")

    def _tokenize(self, split: str, en: list[str], vi: list[str]) -> TranslationDataset:
        src_tok, tgt_tok = self._tokenizers()
        src_ids = [e.ids for e in src_tok.encode_batch([line.strip() for line in en])]
        tgt_ids = [e.ids for e in tgt_tok.encode_batch([line.strip() for line in vi])]
        sources, targets, refs = [], [], []
        truncated = 0
        for s, t, ref in zip(src_ids, tgt_ids, vi):
            if split == "train":
                if not s or not t:
                    continue
                if len(s) > self.max_source_length or len(t) > self.max_target_length:
                    continue
            elif len(s) > self.max_source_length:
                s = s[: self.max_source_length]
                truncated += 1
            sources.append([*s, EOS])
            targets.append(t)
            # NFC, as the tokeniser normalises (and so decodes): a reference in decomposed
            # Unicode would otherwise never match a hypothesis letter for letter in BLEU
            refs.append(unicodedata.normalize("NFC", ref.strip()))
        if split == "train":
            self.dropped_train_pairs = len(en) - len(sources)
            if not sources:
                raise ValueError(
                    "no training pair left: every pair has an empty side or exceeds "
                    f"max_source_length={self.max_source_length}/"
                    f"max_target_length={self.max_target_length}"
                )
        else:
            self.truncated_sources[split] = truncated
        return TranslationDataset(sources, targets, refs)

    def split_set(self, split: str) -> TranslationDataset:
        """The tokenised ``split``; ``RuntimeError`` before :meth:`setup` tokenised it."""
        if split not in self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} loader")
        return self.datasets[split]

    def loader_options(
        self, split: str, dataset: Dataset, batch_size: int, shuffle: bool
    ) -> dict[str, Any]:
        """Pad with :func:`collate`; training batches come from a :class:`LengthBucketSampler`
        (seeded with ``seed``). Worker processes are kept between epochs (the base class's
        ``persistent_workers``), as in the other experiments."""
        options: dict[str, Any] = {"collate_fn": collate}
        if shuffle:
            options["batch_sampler"] = LengthBucketSampler(
                EpochRandomSampler(dataset, self.seed),
                batch_size,
                drop_last=False,
                lengths=[len(s) + len(t) for s, t in zip(dataset.sources, dataset.targets)],
                seed=self.seed,
            )
        return options

    def transfer_batch_to_device(
        self, batch: TranslationBatch, device: torch.device, dataloader_idx: int
    ) -> TranslationBatch:
        """``batch`` on ``device``; not blocking the host where Lightning's own transfer does
        not (any device but the CPU and MPS), so a pinned batch's copy overlaps."""
        return batch.to(device, non_blocking=torch.device(device).type not in ("cpu", "mps"))
