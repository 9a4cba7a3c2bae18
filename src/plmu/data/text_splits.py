"""The splits of a text classification task (IMDB, QQP, SNLI): from the hub or a local folder.

Data comes from the Hugging Face hub through ``datasets`` by default, or from local files with
``data_dir``: ``train.*`` (or ``training.*``), ``test.*`` (or ``testing.*``) and optionally
``validation.*`` (or ``valid.*``, ``val.*``, ``dev.*``, ``eval.*`` or ``evaluation.*``), each
``.jsonl``, ``.csv`` or ``.parquet`` (a file of one of these names in another format, e.g.
``val.tsv``, is an error naming it), with the task's columns
(``text``/``label``, ``question1``/``question2``/``label`` or
``premise``/``hypothesis``/``label``; read by
:func:`~plmu.data.text_files.load_local_split`). Labels are integers ``0..C-1`` or the task's
label names; rows labelled ``-1`` or ``"-"`` (no gold label) are dropped. When ``data_dir`` has
no such files, it may hold (or be) the hub repository's config folder of parquet shards
(``SPLIT-00000-of-0000N.parquet``, or the parquet export's ``SPLIT/0000.parquet``,
``SPLIT/0001.parquet``, ...; read as on the hub route:
:func:`~plmu.data.text_layouts.read_hub_files`), or the dataset's original distribution
(:data:`~plmu.data.text_layouts.ORIGINAL_LAYOUTS`): IMDB's ``aclImdb/``, GLUE's ``QQP/`` or
Stanford's ``snli_1.0/``.
Without a validation split, ``val_fraction`` of the training split (shuffled with ``seed``) is
held out (:func:`load_splits`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from plmu.data import DataError
from plmu.data.text_files import DataNotFoundError, RawSplit, load_local_split
from plmu.data.text_layouts import (
    ORIGINAL_LAYOUTS,
    _find_hub_files,
    _find_original,
    _hub_folder,
    read_hub_files,
)
from plmu.data.text_tasks import TextTask

__all__ = ["FORMATS", "load_splits"]

log = logging.getLogger(__name__)

FORMATS = (".jsonl", ".csv", ".parquet")


# the file stems each split may have in data_dir (validation sets are often named val, valid,
# dev or, after Hugging Face's eval_dataset, eval); two files for one split are an error naming
# both, a file of one of these names in another format is an error (_unread_split_files)
SPLIT_STEMS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev", "eval", "evaluation"),
    "test": ("test", "testing"),
}


def _split_names() -> str:
    """The accepted split file names, for messages."""
    return "; ".join(
        f"{split}: {', '.join(f'{stem}.*' for stem in stems)}"
        for split, stems in SPLIT_STEMS.items()
    )


def _unread_split_files(data_dir: Path) -> list[str]:
    """The files of ``data_dir`` named as a split (``val.tsv``, ``test.json``,
    ``train.csv.gz``) in a format that is not read: with split files beside them they would be
    left out silently."""
    stems = {stem for names in SPLIT_STEMS.values() for stem in names}
    return sorted(
        path.name
        for path in data_dir.iterdir()
        if path.name.split(".", 1)[0] in stems
        and path.name[len(path.name.split(".", 1)[0]) :] not in FORMATS
        and path.is_file()
    )


def _find_file(data_dir: Path, split: str) -> Path | None:
    found = [
        data_dir / f"{stem}{ext}"
        for stem in SPLIT_STEMS[split]
        for ext in FORMATS
        if (data_dir / f"{stem}{ext}").is_file()
    ]
    if len(found) > 1:
        raise ValueError(
            f"data_dir {data_dir} has several {split} files: {[p.name for p in found]}"
        )
    return found[0] if found else None


def _or_original(task: TextTask) -> str:
    layout = ORIGINAL_LAYOUTS.get(task.name)
    train = task.hub_splits["train"]
    hub = (
        f", or the hub's parquet files ({_hub_folder(task)}/{train}-00000-of-NNNNN.parquet, ... "
        f"from huggingface-cli download {task.hub_path} --repo-type dataset, or "
        f"{_hub_folder(task)}/{train}/0000.parquet, ... from its parquet export, --revision "
        f"refs/convert/parquet)"
    )
    return (f", or put {layout.description} there" if layout else "") + hub


def _load_local(task: TextTask, data_dir: Path, test_only: bool = False) -> dict[str, RawSplit]:
    """The splits in ``data_dir``: its ``train.*``/``test.*``/``validation.*`` (:data:`SPLIT_STEMS`)
    files in the task's schema when it has any, else the hub's parquet files or the task's
    original distribution (:data:`ORIGINAL_LAYOUTS`). ``test_only``: the test split alone (the
    others need not be there). A file named as a split in a format that is not read
    (``val.tsv``) is an error naming it, where it would otherwise be left out."""
    if not data_dir.is_dir():
        raise DataNotFoundError(f"data_dir {data_dir} is not a directory")
    wanted = ("test",) if test_only else ("train", "validation", "test")
    files = {split: _find_file(data_dir, split) for split in wanted}
    if not any(files.values()):
        root = _find_hub_files(task, data_dir)
        if root is not None:
            return read_hub_files(root, task, wanted)
        root = _find_original(task, data_dir, test_only)
        if root is not None:
            return ORIGINAL_LAYOUTS[task.name].read(root, task, wanted)
    unread = _unread_split_files(data_dir)
    if unread:
        raise DataError(
            f"data_dir {data_dir}: {', '.join(unread)} {'is' if len(unread) == 1 else 'are'} "
            f"not read: a split file is {', '.join(FORMATS)} ({_split_names()}); convert or "
            f"rename {'it' if len(unread) == 1 else 'them'}, or move "
            f"{'it' if len(unread) == 1 else 'them'} out of the folder"
        )
    splits: dict[str, RawSplit] = {}
    for split, path in files.items():
        if path is not None:
            splits[split] = load_local_split(path, task)
        elif split != "validation":
            raise DataNotFoundError(
                f"{data_dir} has no {split} file: put {split}.jsonl, {split}.csv or "
                f"{split}.parquet there with the columns {[*task.columns, 'label']}"
                f"{_or_original(task)}"
            )
    return splits


def _hint(task: TextTask) -> str:
    return (
        f"put train.jsonl and test.jsonl (or .csv/.parquet; a validation, valid, val, dev or "
        f"eval file optional) with the "
        f"columns {[*task.columns, 'label']} in a folder{_or_original(task)}, "
        f"and pass --data-dir FOLDER"
    )


def _load_hub(task: TextTask, test_only: bool = False) -> dict[str, RawSplit]:
    import datasets

    name = task.hub_path + (f" ({task.hub_config})" if task.hub_config else "")
    try:
        hub = datasets.load_dataset(task.hub_path, task.hub_config)
    except (ConnectionError, OSError) as error:  # offline, no cache: one line, what to do
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataNotFoundError(
            f"cannot load {name} from the Hugging Face hub ({first}); {_hint(task)}"
        ) from None
    splits: dict[str, RawSplit] = {}
    for split, hub_split in task.hub_splits.items():
        if test_only and split != "test":
            continue
        part = hub[hub_split]
        columns = [part[c] for c in task.columns]
        texts, labels, dropped = [], [], 0
        for *values, label in zip(*columns, part["label"]):
            # SNLI marks examples without a gold label with -1; a few hub rows have empty text
            if label < 0 or any(not v or not v.strip() for v in values):
                dropped += 1
                continue
            texts.append(tuple(values))
            labels.append(int(label))
        if dropped:
            log.info(
                "%s %s: dropped %d examples (no gold label or empty text)", name, split, dropped
            )
        splits[split] = RawSplit(texts, labels, f"{name} {hub_split}")
    return splits


def load_splits(
    task: TextTask,
    data_dir: Path | None,
    val_fraction: float,
    seed: int,
    test_only: bool = False,
) -> dict[str, RawSplit]:
    """``{"train", "validation", "test"}`` raw splits from ``data_dir`` or the hub
    (``{"test"}`` alone with ``test_only``: the training and validation files are not read and
    need not exist).

    Without a validation split, a ``val_fraction`` of the shuffled (``seed``) training split
    becomes the validation split and the rest stays for training.
    """
    if data_dir is not None:
        splits = _load_local(task, Path(data_dir), test_only)
    else:
        splits = _load_hub(task, test_only)
    if test_only:
        return splits
    if "validation" not in splits:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        train = splits["train"]
        n_val = max(1, round(len(train) * val_fraction))
        if n_val >= len(train):
            raise ValueError(
                f"{train.source}: {len(train)} examples are too few to hold out "
                f"val_fraction={val_fraction} for validation"
            )
        order = np.random.default_rng(seed).permutation(len(train)).tolist()
        splits["validation"] = train.subset(order[:n_val], f"{train.source} (held out)")
        splits["train"] = train.subset(sorted(order[n_val:]), train.source)
    return splits
