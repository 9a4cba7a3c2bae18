"""One split of a text classification task read from a local file, as a :class:`RawSplit`.

:func:`load_local_split` reads a ``.jsonl``, ``.csv`` or ``.parquet`` file with the task's
columns (``text``/``label``, ``question1``/``question2``/``label`` or
``premise``/``hypothesis``/``label``). Labels are integers ``0..C-1`` or the task's label
names; rows labelled ``-1`` or ``"-"`` (no gold label) are dropped. Every error names the file,
the row and the column. The readers of the other layouts (:mod:`plmu.data.text_layouts`) check
their records with the same rules (:func:`_labelled`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plmu.data import DataError, not_utf8
from plmu.data.text_tasks import TextTask

__all__ = ["DataNotFoundError", "RawSplit", "load_local_split"]

log = logging.getLogger(__name__)


class DataNotFoundError(DataError):
    """Neither the hub nor ``data_dir`` could provide a dataset; the message says what to do."""


@dataclass
class RawSplit:
    """One split as plain Python: ``texts[i]`` is a tuple (one entry per column), ``labels[i]``
    an int class index, ``rows[i]`` its row in ``source`` or, for an example that is a file of
    its own, the file's path relative to ``source`` (for error messages)."""

    texts: list[tuple[str, ...]]
    labels: list[int]
    source: str
    rows: list[int | str] | None = None

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = list(range(len(self.labels)))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int], source: str) -> RawSplit:
        return RawSplit(
            [self.texts[i] for i in index],
            [self.labels[i] for i in index],
            source,
            [self.rows[i] for i in index],
        )


def _parse_label(value: Any, task: TextTask, where: str) -> int:
    names = task.label_names
    if _is_empty(value):
        raise ValueError(
            f"{where}: the label is missing (got {value!r}: an empty or null value); expected "
            f"one of {list(names)} or an integer 0..{len(names) - 1}"
        )
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"{where}: label {value!r} is not one of {list(names)} or 0..{len(names) - 1}"
        )
    if isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer()
    ):
        index = int(value)
    elif isinstance(value, str) and value.strip() in names:
        return names.index(value.strip())
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        index = int(value.strip())
    else:
        raise ValueError(
            f"{where}: unknown label {value!r}; expected one of {list(names)} "
            f"or an integer 0..{len(names) - 1}"
        )
    if not 0 <= index < len(names):
        raise ValueError(
            f"{where}: unknown label {value!r}; expected one of {list(names)} "
            f"or an integer 0..{len(names) - 1}"
        )
    return index


def _is_empty(value: Any) -> bool:
    """True for a value a file leaves out: ``None`` (JSON null), NaN (a pandas or parquet null)
    or a blank string (an empty CSV cell)."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    return isinstance(value, str) and not value.strip()


def _is_unlabelled(value: Any) -> bool:
    """True for the marks of an example without a gold label: ``-1`` (the hub's, e.g. SNLI's)
    and ``"-"`` (the original SNLI files' ``gold_label``)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer, float, np.floating)):
        return value == -1
    return isinstance(value, str) and value.strip() in ("-1", "-")


def _read_table(path: Path, needed: Sequence[str] = ()):  # -> pandas.DataFrame
    """``path`` as a frame; a JSON Lines row without one of the ``needed`` fields other rows
    have is a ValueError naming the file, row and field (a field no row has is left to the
    caller's missing-column error)."""
    import pandas as pd  # a dependency of `datasets`; imported late to keep imports light

    if path.suffix == ".csv":
        # everything as text: "NA" stays a word, an empty field stays "" (and is rejected)
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.ParserError as error:
            raise _csv_error(path, error) from None
        if not isinstance(frame.index, pd.RangeIndex):
            # each row had a field more than the header: pandas took the first for the index
            raise _csv_error(path, None)
        if frame.shape[1] > 1 and (frame.to_numpy() == "").any():
            # pandas fills the fields a short row lacks with "" (a missing text or label, as
            # the message would say): look for one, only where there is an empty field at all
            short = _bad_record(path, short=True)
            if short is not None:
                raise short
        return frame
    if path.suffix == ".jsonl":
        return _read_jsonl(path, needed)
    return pd.read_parquet(path)


def _csv_error(path: Path, error: Exception | None) -> ValueError:
    """The error of a CSV file that pandas cannot read as a table (``error``, or ``None`` where
    it read a field more than the header in every row as an index), naming the first row at
    fault as :func:`_bad_record` does. pandas' own messages count records from 1 with the
    header ("line 5") or from 0 with it ("row 2")."""
    bad = _bad_record(path, short=False, error=error)
    if bad is not None:
        return bad
    detail = str(error).strip() if error is not None else "not a table"
    return ValueError(f"{path}: cannot be read as CSV: {detail}")


def _bad_record(path: Path, short: bool, error: Exception | None = None) -> ValueError | None:
    """The error for the first row of the CSV file ``path`` with more fields than its header
    (or, with ``short``, fewer: pandas fills them with ""), or for a double quote never closed
    where pandas' ``error`` says so; ``None`` if there is none. It names the row as the other
    messages do: its data row (from 0, blank lines not counted, as in the frame) and the file's
    line it starts on (from 1, as the not-UTF-8 error counts)."""
    import csv

    with path.open(encoding="utf-8-sig", newline="") as lines:
        reader = csv.reader(lines)
        header = next(reader, [])
        row, start = 0, reader.line_num + 1
        for record in reader:
            where = f"{_at(str(path), row)} (line {start} of the file)"
            if len(record) > len(header) or (short and 0 < len(record) < len(header)):
                return ValueError(
                    f"{where}: {len(record)} field{'s' * (len(record) != 1)} where the header "
                    f"has {len(header)} ({', '.join(header)}); a text with a comma or a line "
                    f'break must be in double quotes ("a, b"), a quote in it doubled '
                    f'("say ""hi""")'
                )
            row += bool(record)  # a blank line is no row (pandas skips it)
            last, start = where, reader.line_num + 1
    if error is not None and "EOF inside string" in str(error) and header and row:
        return ValueError(
            f"{last}: a double quote opened here is never closed (the rest of the file "
            f'read as one text); a quote inside a text is doubled ("say ""hi""")'
        )
    return None


def _read_jsonl(path: Path, needed: Sequence[str] = ()):  # -> pandas.DataFrame
    """A JSON Lines file as a frame indexed by line (row 0 is the first line): blank lines are
    skipped, each other line must be a JSON object (a ValueError naming the file and row), and
    must have each of the ``needed`` fields that any line has (a ValueError naming the file,
    row and fields: the frame would fill the gap with NaN). UTF-8 with or without a byte order
    mark, as CSV; values keep their JSON types."""
    import pandas as pd

    records, index = [], []
    for row, record in _json_lines(path):
        if not isinstance(record, dict):
            raise ValueError(
                f"{_at(str(path), row)}: expected a JSON object, got {type(record).__name__}"
            )
        records.append(record)
        index.append(row)
    present = [key for key in needed if any(key in record for record in records)]
    for row, record in zip(index, records):
        missing = [key for key in present if key not in record]
        if missing:
            raise ValueError(f"{_at(str(path), row)}: missing field(s) {missing}")
    return pd.DataFrame.from_records(records, index=index) if records else pd.DataFrame()


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(row, value)`` for each non-blank line of a JSON Lines file (row 0 is the first line;
    a line that is not JSON is a ValueError naming the file and row). UTF-8 with or without a
    byte order mark (a BOM is not JSON)."""
    with path.open(encoding="utf-8-sig") as lines:
        for row, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                yield row, json.loads(line)
            except ValueError as error:
                raise ValueError(f"{_at(str(path), row)}: not JSON ({error})") from None


def _at(source: str, row: int | str) -> str:
    """Where an example is, for messages: ``"FILE: row N"``, or ``"FOLDER: NAME"`` for an
    example that is a file of its own (an IMDB review)."""
    return f"{source}: row {row}" if isinstance(row, int) else f"{source}: {row}"


def _labelled(
    records: Iterable[tuple[int | str, Sequence[Any], Any]],
    task: TextTask,
    source: str,
    drop_empty: bool = False,
) -> RawSplit:
    """Check and collect the ``(row, texts, label)`` records of one split into a
    :class:`RawSplit`.

    Records labelled ``-1`` or ``"-"`` (no gold label) are dropped. An empty (or non-string)
    text is an error, or, with ``drop_empty`` (the original distributions, as on the hub
    route), dropped and counted.

    Raises:
        ValueError: an empty text (without ``drop_empty``), an unknown label, or no example
            left; the message names the source, the row and the column.
    """
    texts: list[tuple[str, ...]] = []
    labels: list[int] = []
    rows: list[int | str] = []
    unlabelled = empty = 0
    for row, values, label in records:
        if _is_unlabelled(label):
            unlabelled += 1
            continue
        bad = [
            (column, value)
            for column, value in zip(task.columns, values)
            if not isinstance(value, str) or not value.strip()
        ]
        if bad and drop_empty:
            empty += 1
            continue
        if bad:
            raise ValueError(_text_problem(_at(source, row), *bad[0]))
        labels.append(_parse_label(label, task, f"{_at(source, row)}: column 'label'"))
        texts.append(tuple(values))
        rows.append(row)
    if not labels:
        hidden = (
            f": all {unlabelled} are labelled -1 or '-' (hidden labels, as in GLUE QQP's test "
            f"split: use a labelled split, for QQP GLUE's validation split, as the test file)"
            if unlabelled and not empty
            else ""
        )
        raise ValueError(f"{source}: no rows with a gold label{hidden}")
    if unlabelled:
        log.info("%s: dropped %d rows without a gold label", source, unlabelled)
    if empty:
        log.info("%s: dropped %d rows with an empty text", source, empty)
    return RawSplit(texts, labels, source, rows)


def _text_problem(where: str, column: str, value: Any) -> str:
    """What is wrong with the text ``value`` of ``column`` (not a non-blank ``str``), for a
    message that starts with ``where`` (the file and row)."""
    if _is_empty(value):
        if isinstance(value, str):
            what = "only spaces" if value else "an empty text"
        else:  # None (a JSON null) or NaN (pandas' null of a parquet or CSV cell)
            what = "a null value"
        return f"{where}: column {column!r}: the text is missing ({what})"
    return f"{where}: column {column!r} must be a text, got {type(value).__name__} {value!r}"


def load_local_split(path: Path, task: TextTask, drop_empty: bool = False) -> RawSplit:
    """Read one local split file (``.jsonl``/``.csv``/``.parquet``) in ``task``'s schema.

    Rows whose label is ``-1`` or ``"-"`` (no gold label, as in SNLI) are dropped, as on the
    hub route; so are rows with an empty text with ``drop_empty`` (the hub's own files).

    Raises:
        ValueError: a missing column, an empty (or non-string) text, or an unknown label; the
            message names the file, the row and the column.
    """
    needed = (*task.columns, "label")
    try:
        frame = _read_table(path, needed)
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except ValueError as error:
        if str(error).startswith(str(path)):  # the error names the file, row and what is wrong
            raise
        raise ValueError(f"cannot read {path}: {error}") from None
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; {task.name} files need the columns "
            f"{list(needed)} (found {list(frame.columns)})"
        )
    columns = [frame[c].tolist() for c in task.columns]
    # a row is the frame's position, or for JSON Lines the line's (blank lines are skipped)
    rows = frame.index.tolist() if path.suffix == ".jsonl" else range(len(frame))
    records = (
        (row, values, label) for row, *values, label in zip(rows, *columns, frame["label"].tolist())
    )
    return _labelled(records, task, str(path), drop_empty)
