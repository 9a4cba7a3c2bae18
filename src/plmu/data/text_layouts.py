"""The downloads of a text classification dataset that ``data_dir`` may hold instead of split
files, read as :class:`~plmu.data.text_files.RawSplit` splits.

* The hub repository's parquet files (``huggingface-cli download``): the config's folder holds
  ``SPLIT-00000-of-0000N.parquet``, or, in the parquet export (``--revision
  refs/convert/parquet``), ``SPLIT/0000.parquet``, ``SPLIT/0001.parquet``, ...; read as on the
  hub route (:func:`read_hub_files`).
* The dataset's original distribution (:data:`ORIGINAL_LAYOUTS`): IMDB's ``aclImdb/``, GLUE's
  ``QQP/`` or Stanford's ``snli_1.0/``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plmu.data import not_utf8
from plmu.data.text_files import (
    DataNotFoundError,
    RawSplit,
    _at,
    _json_lines,
    _labelled,
    load_local_split,
)
from plmu.data.text_tasks import TextTask

__all__ = [
    "ORIGINAL_LAYOUTS",
    "OriginalLayout",
    "read_aclimdb",
    "read_glue_qqp",
    "read_glue_tsv",
    "read_hub_files",
    "read_snli",
    "read_snli_jsonl",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the hub's files
# The parquet files of the hub's repository (``huggingface-cli download``), read when data_dir
# has no train.*/test.* files: the config's folder holds ``SPLIT-00000-of-0000N.parquet``, or,
# in the parquet export (``--revision refs/convert/parquet``), ``SPLIT/0000.parquet``, ...

SHARD = re.compile(r"(?P<split>.+)-(?P<index>\d+)-of-(?P<total>\d+)\.parquet")


EXPORT_SHARD = re.compile(r"\d+\.parquet")  # the parquet export's SPLIT/0000.parquet


def _hub_folder(task: TextTask) -> str:
    """The folder of ``task``'s config in its hub repository (``plain_text`` without one)."""
    return task.hub_config or "plain_text"


def _hub_folders(task: TextTask) -> tuple[str, ...]:
    """The folders ``task``'s config may have in a download of its hub repository: the
    config's name, or without one ``plain_text`` (stanfordnlp/imdb and snli) or ``default``
    (the parquet export's name for a dataset without configs)."""
    return (task.hub_config,) if task.hub_config else ("plain_text", "default")


def _shards(folder: Path, split: str) -> list[Path]:
    """The parquet shards of the hub split ``split`` in ``folder``, in order (none: ``[]``):
    the repository's ``SPLIT-00000-of-0000N.parquet``, or the parquet export's
    (``refs/convert/parquet``) ``SPLIT/0000.parquet``, ``SPLIT/0001.parquet``, ...

    Raises:
        DataNotFoundError: a shard of the set is missing (naming it), or ``folder`` holds the
            split in both layouts.
    """
    flat = _flat_shards(folder, split)
    export = _export_shards(folder / split)
    if flat and export:
        raise DataNotFoundError(
            f"{folder} holds the {split} split twice, as {flat[0].name} and as "
            f"{split}/{export[0].name} (the parquet export): keep one"
        )
    return flat or export


def _export_shards(folder: Path) -> list[Path]:
    """``folder``'s ``0000.parquet``, ``0001.parquet``, ... in order (one missing: an error)."""
    if not folder.is_dir():
        return []
    found = {
        int(path.name.split(".")[0]): path
        for path in folder.iterdir()
        if EXPORT_SHARD.fullmatch(path.name) and path.is_file()
    }
    missing = [i for i in range(max(found, default=-1) + 1) if i not in found]
    if missing:
        width = len(next(iter(found.values())).name.split(".")[0])
        raise DataNotFoundError(
            f"{folder.parent}: {folder.name}/{missing[0]:0{width}d}.parquet is missing (the "
            f"hub's {folder.name} shards)"
        )
    return [found[i] for i in sorted(found)]


def _flat_shards(folder: Path, split: str) -> list[Path]:
    found = {}
    for path in folder.glob(f"{split}-*-of-*.parquet"):
        match = SHARD.fullmatch(path.name)
        if match and match["split"] == split:
            found[path.name] = (int(match["index"]), int(match["total"]), len(match["index"]))
    if not found:
        return []
    _, total, width = max(found.values())
    names = [f"{split}-{i:0{width}d}-of-{total:0{width}d}.parquet" for i in range(total)]
    missing = [name for name in names if name not in found]
    if missing:
        raise DataNotFoundError(f"{folder}: {missing[0]} is missing (the hub's {split} shards)")
    return [folder / name for name in names]


def _find_hub_files(task: TextTask, data_dir: Path) -> Path | None:
    """The folder of the hub's parquet files of ``task``: ``data_dir/CONFIG`` or ``data_dir``."""
    for root in (*(data_dir / name for name in _hub_folders(task)), data_dir):
        if _shards(root, task.hub_splits["train"]) or _shards(root, task.hub_splits["test"]):
            return root
    return None


def read_hub_files(root: Path, task: TextTask, splits: Sequence[str]) -> dict[str, RawSplit]:
    """The ``splits`` of the hub's parquet files in ``root``, mapped as on the hub route
    (``task.hub_splits``: GLUE QQP's unlabelled test shards are not read, its validation split
    is the test split). Rows without a gold label (-1) or with an empty text are dropped, as on
    the hub route; an error names the shard and its row."""
    read: dict[str, RawSplit] = {}
    for split in splits:
        if split not in task.hub_splits:
            continue
        hub_split = task.hub_splits[split]
        paths = _shards(root, hub_split)
        if not paths:
            raise DataNotFoundError(
                f"{root}: {hub_split}-00000-of-NNNNN.parquet (or {hub_split}/0000.parquet) is "
                f"missing"
            )
        parts = [load_local_split(path, task, drop_empty=True) for path in paths]
        if len(parts) == 1:
            read[split] = parts[0]
            continue
        read[split] = RawSplit(
            [text for part in parts for text in part.texts],
            [label for part in parts for label in part.labels],
            str(root),
            [
                f"{path.relative_to(root).as_posix()}: row {row}"
                for path, part in zip(paths, parts)
                for row in part.rows
            ],
        )
    return read


# ----------------------------------------------------------------------------- original files
# The datasets as their authors distribute them, read when data_dir has no train.*/test.* files.


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataNotFoundError(f"{path} is missing")
    return path


def read_aclimdb(
    root: Path, task: TextTask, splits: Sequence[str] = ("train", "test")
) -> dict[str, RawSplit]:
    """IMDB as in ``aclImdb_v1.tar.gz``: ``root/{train,test}/{neg,pos}/ID_RATING.txt``.

    One review a file, read as is (UTF-8, ``<br />`` tags included, as on the hub); the label
    is the folder's name among ``task.label_names`` (``neg`` 0, ``pos`` 1). ``train/unsup``,
    hidden files (macOS's ``._*``) and the other files are ignored; a split's reviews are in
    file-name order, negatives first. ``splits``: which of ``"train"`` and ``"test"`` to read.
    """
    read: dict[str, RawSplit] = {}
    for split in (name for name in ("train", "test") if name in splits):
        folder = root / split
        records = [
            (f"{label}/{path.name}", (_read_review(path, folder),), index)
            for index, label in enumerate(task.label_names)
            for path in sorted(_require(folder / label).glob("*.txt"))
            if not path.name.startswith(".")  # hidden: e.g. macOS's AppleDouble "._0_9.txt"
        ]
        read[split] = _labelled(records, task, str(folder), drop_empty=True)
    return read


def _read_review(path: Path, folder: Path) -> str:
    """One review file, as UTF-8 (a DataError naming it if it is not)."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise not_utf8(_at(str(folder), path.relative_to(folder).as_posix()), error) from None


def read_glue_tsv(path: Path, task: TextTask) -> RawSplit:
    """One GLUE QQP file (``train.tsv``/``dev.tsv``): tab-separated, a header naming
    ``question1``, ``question2`` and ``is_duplicate``, no quoting (a ``"`` is a character).

    The real files have broken lines (a question cut by a line break, so too few or too many
    fields) and empty questions: such rows are skipped and reported in one warning. Lines end
    at ``"\n"`` (a ``"\r"`` inside a question is text, ``"\r\n"`` ends are read too); blank
    lines and a byte order mark are skipped. A file that
    is not UTF-8 is a :class:`~plmu.data.DataError` naming its first bad line.
    """
    try:
        return _read_glue_tsv(path, task)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def _read_glue_tsv(path: Path, task: TextTask) -> RawSplit:
    needed = ("question1", "question2", "is_duplicate")
    # utf-8-sig: a byte order mark is not part of the first column's name; newline="\n": a line
    # ends at "\n" only ("\r\n" ends are stripped), a carriage return inside a question is text
    with path.open(encoding="utf-8-sig", newline="\n") as lines:
        header = lines.readline().rstrip("\r\n").split("\t")
        missing = [c for c in needed if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; GLUE's QQP files have a header with "
                f"{list(needed)} (found {header})"
            )
        first, second, label = (header.index(c) for c in needed)
        records, skipped = [], []
        for row, line in enumerate(lines):
            if not line.strip():  # a blank line (at the end of a re-saved file) holds no row
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != len(header) or not (fields[first].strip() and fields[second].strip()):
                skipped.append(row)
                continue
            records.append((row, (fields[first], fields[second]), fields[label]))
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
        log.warning(
            "%s: skipped %d malformed rows (not %d tab-separated fields, or an empty question): "
            "rows %s (row 0 is the line after the header)",
            path, len(skipped), len(header), shown,
        )  # fmt: skip
    return _labelled(records, task, str(path))


def read_glue_qqp(
    root: Path, task: TextTask, splits: Sequence[str] = ("train", "test")
) -> dict[str, RawSplit]:
    """QQP as GLUE distributes it: ``root/train.tsv`` and ``root/dev.tsv``
    (:func:`read_glue_tsv`).

    GLUE's ``test.tsv`` has no labels, so, as on the hub route, ``dev.tsv`` is the test split
    and the validation split is held out of train. ``splits``: which of ``"train"`` and
    ``"test"`` to read.
    """
    files = {"train": "train.tsv", "test": "dev.tsv"}
    return {
        split: read_glue_tsv(_require(root / name), task)
        for split, name in files.items()
        if split in splits
    }


def read_snli_jsonl(path: Path, task: TextTask) -> RawSplit:
    """One Stanford SNLI file (``snli_1.0_*.jsonl``): a JSON object a line, of which
    ``sentence1`` (the premise), ``sentence2`` (the hypothesis) and ``gold_label`` are read.

    ``gold_label`` ``"-"`` (no consensus) and empty sentences are dropped, as on the hub route;
    blank lines and a byte order mark are skipped. A file that is not UTF-8 is a
    :class:`~plmu.data.DataError` naming its first bad line.
    """
    try:
        return _read_snli_jsonl(path, task)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def _read_snli_jsonl(path: Path, task: TextTask) -> RawSplit:
    needed = ("sentence1", "sentence2", "gold_label")
    records = []
    for row, pair in _json_lines(path):
        missing = [f for f in needed if f not in pair] if isinstance(pair, dict) else needed
        if missing:
            raise ValueError(
                f"{_at(str(path), row)}: missing field(s) {list(missing)}; SNLI lines "
                f"need {list(needed)}"
            )
        records.append((row, (pair["sentence1"], pair["sentence2"]), pair["gold_label"]))
    return _labelled(records, task, str(path), drop_empty=True)


def read_snli(
    root: Path, task: TextTask, splits: Sequence[str] = ("train", "validation", "test")
) -> dict[str, RawSplit]:
    """SNLI as Stanford distributes it: ``root/snli_1.0_{train,dev,test}.jsonl``
    (:func:`read_snli_jsonl`); ``dev`` is the validation split. ``splits``: which to read."""
    files = {"train": "train", "validation": "dev", "test": "test"}
    return {
        split: read_snli_jsonl(_require(root / f"snli_1.0_{name}.jsonl"), task)
        for split, name in files.items()
        if split in splits
    }


@dataclass(frozen=True)
class OriginalLayout:
    """A task's original distribution: its ``folder`` (in ``data_dir``, or ``data_dir`` itself)
    holds ``marker``, which identifies it (``test_marker`` where only the test split is read,
    as by ``plmu evaluate``); ``read(folder, task, splits)`` gives the named splits."""

    folder: str
    marker: str
    description: str
    read: Callable[[Path, TextTask, Sequence[str]], dict[str, RawSplit]]
    test_marker: str


ORIGINAL_LAYOUTS: dict[str, OriginalLayout] = {
    "imdb": OriginalLayout(
        "aclImdb", "train/pos",
        "the aclImdb/ folder of aclImdb_v1.tar.gz (train/pos, train/neg, test/pos, test/neg)",
        read_aclimdb, "test/pos",
    ),
    "qqp": OriginalLayout(
        "QQP", "train.tsv", "GLUE's QQP/ folder (train.tsv, dev.tsv)", read_glue_qqp, "dev.tsv",
    ),
    "snli": OriginalLayout(
        "snli_1.0", "snli_1.0_train.jsonl",
        "the snli_1.0/ folder (snli_1.0_train.jsonl, snli_1.0_dev.jsonl, snli_1.0_test.jsonl)",
        read_snli, "snli_1.0_test.jsonl",
    ),
}  # fmt: skip


def _find_original(task: TextTask, data_dir: Path, test_only: bool = False) -> Path | None:
    """The folder of ``task``'s original distribution: ``data_dir/FOLDER`` or ``data_dir``
    (found by its test files alone with ``test_only``)."""
    layout = ORIGINAL_LAYOUTS.get(task.name)
    if layout is None:
        return None
    marker = layout.test_marker if test_only else layout.marker
    for root in (data_dir / layout.folder, data_dir):
        if (root / marker).exists():
            return root
    return None
