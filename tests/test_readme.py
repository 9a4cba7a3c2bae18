"""The Python examples in README.md run as written, and the docstring examples hold."""

import doctest
import re
from pathlib import Path

import pytest

import plmu.layers
import plmu.memory

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index):
    exec(compile(python_blocks()[index], f"README.md[python block {index}]", "exec"), {})


@pytest.mark.parametrize("module", [plmu.memory, plmu.layers])
def test_docstring_examples(module):
    import torch

    result = doctest.testmod(module, extraglobs={"torch": torch}, verbose=False)
    assert result.attempted > 0 and result.failed == 0
