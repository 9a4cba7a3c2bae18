"""Text classification data (IMDB, QQP, SNLI): vocabulary, encoding, batching and the datamodule.

The tasks are :data:`~plmu.data.text_tasks.TASKS`; their splits come from the Hugging Face hub
or from local files with ``data_dir`` (:func:`~plmu.data.text_splits.load_splits`, where the
accepted files and folders are described).

A word-level vocabulary (``tokenizers``) is built on the training split only and travels in the
checkpoint (:meth:`TextClassificationData.saved_state`), so a loaded model encodes text exactly as
in training without reading data. Sequences longer than ``max_length`` tokens are truncated in
the data splits (``truncation_side``: ``"right"`` keeps the first tokens, ``"left"`` the last);
:meth:`TextClassificationData.encode` (used by ``plmu predict``) refuses them instead.

Batches are right-padded with id 0 and carry each sequence's length, which the LMU layers use
so that padding never changes a prediction: ``(ids (B, T), lengths (B,), labels (B,))`` for
single texts, ``(ids_a, lengths_a, ids_b, lengths_b, labels)`` for pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch.utils.data import Dataset

# the task table, the file readers and the split loading live in text_tasks, text_files,
# text_layouts and text_splits; the names this module exported before that split are
# re-exported, so that imports from here keep working
from plmu.data import check_text
from plmu.data.text_files import DataNotFoundError, RawSplit, _at, load_local_split
from plmu.data.text_layouts import (
    ORIGINAL_LAYOUTS,
    read_aclimdb,
    read_glue_qqp,
    read_hub_files,
    read_snli,
)
from plmu.data.text_splits import FORMATS, load_splits
from plmu.data.text_tasks import TASKS, TextTask
from plmu.training.datamodule import SplitDataModule

__all__ = [
    "FORMATS",
    "HTML_TAG",
    "ORIGINAL_LAYOUTS",
    "PAD_ID",
    "TASKS",
    "DataNotFoundError",
    "EncodedTexts",
    "TextClassificationData",
    "TextTask",
    "build_tokenizer",
    "collate",
    "load_local_split",
    "read_aclimdb",
    "read_glue_qqp",
    "read_hub_files",
    "read_snli",
]

log = logging.getLogger(__name__)

PAD = "[PAD]"
UNK = "[UNK]"
PAD_ID = 0  # the id of PAD in every vocabulary built here
# An HTML tag (IMDB's <br />, <i>, </i>, <a href="...">): a name right after the "<" and, if
# anything follows it, attributes with an "=". A bare "<" or ">" is text ("<3", "x < 5 and
# y > 3", "x<y and y>z"): a looser pattern such as <[^>]*> would delete the words between it
# and the next ">".
HTML_TAG = r"</?[A-Za-z][A-Za-z0-9]*(?:\s+[^<>=]*=[^<>]*)?\s*/?>"


# ----------------------------------------------------------------------------- vocabulary


def build_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """A word-level tokenizer trained on ``texts``: lower-cased, accents and HTML tags
    (:data:`HTML_TAG`; a bare ``<`` or ``>`` stays) removed, words and punctuation split. Id 0
    is ``[PAD]``, id 1 ``[UNK]`` (every unseen word)."""
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3, got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(HTML_TAG), " "),
            normalizers.NFD(),
            normalizers.StripAccents(),
            normalizers.Lowercase(),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, UNK],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    assert tokenizer.token_to_id(PAD) == PAD_ID
    return tokenizer


# ----------------------------------------------------------------------------- torch side


class EncodedTexts(Dataset):
    """Encoded examples: item ``i`` is ``(ids_1, ..., ids_k, label)`` with ``ids_j`` an int64
    tensor ``(length_j,)`` (``k`` = 1 for texts, 2 for pairs) and ``label`` an int."""

    def __init__(self, ids: list[tuple[torch.Tensor, ...]], labels: list[int]) -> None:
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} encoded texts but {len(labels)} labels")
        self.ids = ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        return (*self.ids[i], self.labels[i])


def pad(sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors with :data:`PAD_ID`: ``(ids (B, T_max), lengths (B,))``."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    ids = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True, padding_value=PAD_ID)
    return ids, lengths


def collate(batch: Sequence[tuple[Any, ...]]) -> tuple[torch.Tensor, ...]:
    """``[(ids_1, ..., ids_k, label), ...]`` -> ``(ids_1, lengths_1, ..., ids_k, lengths_k,
    labels)``, each ``ids_j`` ``(B, T_j)`` right-padded, ``lengths_j`` and ``labels`` ``(B,)``."""
    *segments, labels = zip(*batch)
    out: list[torch.Tensor] = []
    for sequences in segments:
        out.extend(pad(sequences))
    out.append(torch.tensor(labels, dtype=torch.long))
    return tuple(out)


class TextClassificationData(SplitDataModule):
    """The datamodule of one :class:`TextTask` (see :mod:`plmu.data.text_splits` for
    the data layout).

    Args:
        task: the benchmark.
        config: the run's flat config; reads ``batch_size``, ``seed``, ``max_length``,
            ``vocab_size``, ``min_frequency``, ``truncation_side``, ``val_fraction`` and
            ``num_workers``.
        data_dir: local files, or ``None`` for the hub.
        saved: :meth:`saved_state` of a checkpoint; its vocabulary is used instead of building
            one. Nothing is read until :meth:`setup`.

    The encoded splits are ``sets`` (``{"train", "validation", "test"}``, empty before
    :meth:`setup`), also served as ``train_set``, ``val_set`` and ``test_set``.
    """

    def __init__(
        self,
        task: TextTask,
        config: dict[str, Any],
        data_dir: Path | None = None,
        saved: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            int(config["batch_size"]),
            int(config.get("num_workers") or 0),
            seed=int(config["seed"]),
        )
        self.task = task
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.max_length = int(config["max_length"])
        self.vocab_size = int(config["vocab_size"])
        self.min_frequency = int(config.get("min_frequency", 1))
        self.truncation_side = str(config.get("truncation_side", "right"))
        self.val_fraction = float(config.get("val_fraction", 0.1))
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.truncation_side not in ("right", "left"):
            raise ValueError(
                f"truncation_side must be 'right' or 'left', got {self.truncation_side!r}"
            )
        self.tokenizer: Tokenizer | None = None
        if saved is not None:
            if "tokenizer" not in saved:
                raise ValueError("saved state has no 'tokenizer'; was it saved by this task?")
            self.tokenizer = Tokenizer.from_str(saved["tokenizer"])
        self.sets: dict[str, EncodedTexts] = {}

    # -- vocabulary and encoding

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.task.label_names

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @property
    def vocab_size_built(self) -> int:
        """Size of the vocabulary (the embedding's rows); needs a tokenizer."""
        return self._tokenizer().get_vocab_size()

    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RuntimeError("no vocabulary yet: call setup() or pass saved=")
        return self.tokenizer

    def saved_state(self) -> dict[str, Any]:
        """``{"tokenizer": json}``: all a checkpoint needs to encode text as in training."""
        return {"tokenizer": self._tokenizer().to_str()}

    def state_dict(self) -> dict[str, Any]:
        """Nothing: the vocabulary is stored once, in ``checkpoint["plmu"]["saved"]``
        (:meth:`saved_state`), which the runner gives to :meth:`load_state_dict` before a
        resumed fit. (Checkpoints written before also held it here, in Lightning's datamodule
        state; Lightning still hands that copy to :meth:`load_state_dict` on resuming them.)"""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A resumed fit: the checkpoint's vocabulary (its ``saved``, or the Lightning state of
        a checkpoint written before that was empty) replaces the one ``setup`` built again
        (which differs when the training files, or how this or a later release normalises
        text, changed), and the splits are encoded again with it, so the embedding keeps
        reading the word ids it was trained with."""
        stored = state_dict.get("tokenizer")
        if stored is None or (self.tokenizer is not None and self.tokenizer.to_str() == stored):
            return
        self.tokenizer = Tokenizer.from_str(stored)
        if self.sets:
            log.warning("%s: resuming with the checkpoint's vocabulary", self.task.name)
            self.sets = {}
            self.train_set = self.val_set = self.test_set = None
            self.setup()

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer().encode_batch(texts, add_special_tokens=False)]

    def encode(self, *texts: str) -> tuple[torch.Tensor, ...]:
        """Encode one example for prediction: ``len(texts)`` must equal the task's columns.

        Returns ``(ids, lengths)`` (one text) or ``(ids_a, lengths_a, ids_b, lengths_b)``
        (a pair), each ``ids`` ``(1, T)``.

        Raises:
            ValueError: wrong number of texts, an empty text (no tokens), or a text longer than
                ``max_length`` tokens.
        """
        columns = self.task.columns
        if len(texts) != len(columns):
            raise ValueError(
                f"{self.task.name} expects {len(columns)} text(s) ({', '.join(columns)}), "
                f"got {len(texts)}"
            )
        out: list[torch.Tensor] = []
        for column, text in zip(columns, texts):
            if not isinstance(text, str):
                raise TypeError(f"{column} must be a str, got {type(text).__name__}")
            ids = self._ids([check_text(text, column)])[0]
            if not ids:
                raise ValueError(f"{column} is empty (no words): {text!r}")
            if len(ids) > self.max_length:
                raise ValueError(
                    f"{column} has {len(ids)} tokens, more than max_length={self.max_length} "
                    "the model was trained with; shorten it"
                )
            out.extend(pad([torch.tensor(ids, dtype=torch.long)]))
        return tuple(out)

    def _encode_split(self, split: RawSplit) -> EncodedTexts:
        per_column = [self._ids([t[j] for t in split.texts]) for j in range(len(self.task.columns))]
        rows: list[tuple[torch.Tensor, ...]] = []
        truncated = 0
        for row, segments in zip(split.rows, zip(*per_column)):
            encoded = []
            for column, ids in zip(self.task.columns, segments):
                if not ids:
                    raise ValueError(
                        f"{_at(split.source, row)}: column {column!r} has no words "
                        f"(only markup or whitespace)"
                    )
                if len(ids) > self.max_length:
                    truncated += 1
                    keep = self.max_length
                    ids = ids[:keep] if self.truncation_side == "right" else ids[-keep:]
                encoded.append(torch.tensor(ids, dtype=torch.long))
            rows.append(tuple(encoded))
        if truncated:
            log.info(
                "%s: truncated %d texts to max_length=%d (%s side)",
                split.source, truncated, self.max_length, self.truncation_side,
            )  # fmt: skip
        return EncodedTexts(rows, list(split.labels))

    # -- SplitDataModule

    def setup(self, stage: str | None = None) -> None:
        """Read and encode the splits (first call). A test (``stage="test"``) with the
        vocabulary of a checkpoint (``saved``) reads the test split alone, so ``plmu evaluate``
        needs no training file; any other stage then reads all three."""
        if stage == "test" and self.train_set is None and self.tokenizer is not None:
            if self.test_set is None:
                raw = load_splits(self.task, self.data_dir, self.val_fraction, self.seed, True)
                self.sets = {"test": self._encode_split(raw["test"])}
                self.test_set = self.sets["test"]
            return
        super().setup(stage)

    def build(self) -> tuple[EncodedTexts, EncodedTexts, EncodedTexts]:
        """Read the splits, build the vocabulary on train unless loaded, encode (first setup)."""
        raw = load_splits(self.task, self.data_dir, self.val_fraction, self.seed)
        if self.tokenizer is None:
            self.tokenizer = build_tokenizer(
                _column_texts(raw["train"]), self.vocab_size, self.min_frequency
            )
        self.sets = {name: self._encode_split(split) for name, split in raw.items()}
        return self.sets["train"], self.sets["validation"], self.sets["test"]

    def loader_options(
        self, split: str, dataset: Dataset, batch_size: int, shuffle: bool
    ) -> dict[str, Any]:
        """Pad with :func:`collate`. The training split is shuffled by the base class, in an
        order given by ``seed`` and the epoch
        (:class:`~plmu.training.datamodule.EpochRandomSampler`: a resumed run shuffles as the
        uninterrupted one)."""
        return {"collate_fn": collate}


def _column_texts(split: RawSplit) -> Iterator[str]:
    for texts in split.texts:
        yield from texts
