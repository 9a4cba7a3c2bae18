"""The text classification benchmarks (IMDB, QQP, SNLI): what distinguishes one from another.

:data:`TASKS` names each :class:`TextTask`: its text columns (a text, or a pair), its class
names and where the Hugging Face hub holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TASKS", "TextTask"]


@dataclass(frozen=True)
class TextTask:
    """What distinguishes one text classification benchmark from another.

    Attributes:
        name: the experiment name, e.g. ``"imdb"``.
        columns: the text columns, one (a text) or two (a pair).
        label_names: the class names; class ``i`` is ``label_names[i]``.
        hub_path, hub_config: the Hugging Face hub dataset (``load_dataset(path, config)``).
        hub_splits: ``{"train": ..., "test": ..., "validation": ...}`` hub split names
            (``"validation"`` optional; carved from train when absent).
    """

    name: str
    columns: tuple[str, ...]
    label_names: tuple[str, ...]
    hub_path: str
    hub_config: str | None
    hub_splits: dict[str, str]

    @property
    def is_pair(self) -> bool:
        return len(self.columns) == 2

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


TASKS: dict[str, TextTask] = {
    "imdb": TextTask(
        "imdb", ("text",), ("neg", "pos"), "stanfordnlp/imdb", None,
        {"train": "train", "test": "test"},
    ),
    # GLUE's QQP test labels are hidden (-1), so its validation split is the test set here.
    "qqp": TextTask(
        "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), "nyu-mll/glue", "qqp",
        {"train": "train", "test": "validation"},
    ),
    "snli": TextTask(
        "snli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
        "stanfordnlp/snli", None,
        {"train": "train", "validation": "validation", "test": "test"},
    ),
}  # fmt: skip
