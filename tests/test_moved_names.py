"""The public names of the modules split into smaller ones (memory.py, training/runner.py,
data/text_classification.py) are still importable from their old homes: each name that was in
the old module's ``__all__`` is there, the same object as in its new module."""

from __future__ import annotations

import importlib

import pytest

# each module's __all__ before its split, and where each name lives now
MOVED = {
    "plmu.memory": {
        "MODES": "plmu.memory",
        "LegendreMemory": "plmu.memory",
        "check_lengths": "plmu.checks",
        "check_sequence": "plmu.checks",
        "check_state": "plmu.checks",
    },
    "plmu.training.runner": {
        "CheckpointError": "plmu.training.checkpoints",
        "RunInfo": "plmu.training.run_info",
        "evaluate": "plmu.training.runner",
        "format_summary": "plmu.training.runner",
        "load_checkpoint": "plmu.training.checkpoints",
        "read_run_info": "plmu.training.checkpoints",
        "train": "plmu.training.runner",
    },
    "plmu.data.text_classification": {
        "FORMATS": "plmu.data.text_splits",
        "HTML_TAG": "plmu.data.text_classification",
        "ORIGINAL_LAYOUTS": "plmu.data.text_layouts",
        "PAD_ID": "plmu.data.text_classification",
        "TASKS": "plmu.data.text_tasks",
        "DataNotFoundError": "plmu.data.text_files",
        "EncodedTexts": "plmu.data.text_classification",
        "TextClassificationData": "plmu.data.text_classification",
        "TextTask": "plmu.data.text_tasks",
        "build_tokenizer": "plmu.data.text_classification",
        "collate": "plmu.data.text_classification",
        "load_local_split": "plmu.data.text_files",
        "read_aclimdb": "plmu.data.text_layouts",
        "read_glue_qqp": "plmu.data.text_layouts",
        "read_hub_files": "plmu.data.text_layouts",
        "read_snli": "plmu.data.text_layouts",
    },
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_the_old_public_names_still_import_from_the_old_module(old: str) -> None:
    module = importlib.import_module(old)
    for name, new in MOVED[old].items():
        assert name in module.__all__, f"{old}.__all__ lost {name}"
        assert getattr(module, name) is getattr(importlib.import_module(new), name), name
