"""The Python examples in README.md run as written, and the docstring examples hold."""

import argparse
import ast
import doctest
import inspect
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


def _target_names(target: ast.expr) -> list[str]:
    """The names an assignment target binds, left to right (``y, (h, m)`` -> y, h, m)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _target_names(element)]
    return []


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_shape_comments_hold(index):
    """A comment like ``# (4, 500, 16), (4, 16)`` after ``m, state = ...`` gives the shapes of
    the names bound on that line, in order (fewer shapes than names: the first ones)."""
    source = python_blocks()[index]
    lines = source.splitlines()
    namespace: dict = {}
    checked = 0
    for statement in ast.parse(source).body:
        code = ast.get_source_segment(source, statement)
        exec(compile(code, f"README.md[python block {index}]", "exec"), namespace)
        if not isinstance(statement, ast.Assign) or statement.lineno != statement.end_lineno:
            continue
        _, _, comment = lines[statement.lineno - 1].partition("#")
        shapes = [
            tuple(int(n) for n in group.split(","))
            for group in re.findall(r"\((\d+(?:,\s*\d+)+)\)", comment)
        ]
        names = [n for target in statement.targets for n in _target_names(target)]
        for name, shape in zip(names, shapes):
            assert tuple(namespace[name].shape) == shape, (lines[statement.lineno - 1], name)
            checked += 1
    if "# (" in source:
        assert checked > 0


SUBCOMMANDS = ("train", "evaluate", "predict", "generate", "translate", "bench")
DOCS = [
    README,
    *sorted((README.parent / "docs").glob("*.md")),
    README.parent / "benchmarks" / "README.md",
]


def _documented_commands():
    """``(file, subcommand, flags)`` for every ``plmu SUBCOMMAND ...`` line of the docs, with
    backslash continuations and indented ``[--option]`` synopsis lines joined."""
    found = []
    for path in DOCS:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        text = re.sub(r"\n\s+(?=\[--)", " ", text)
        for line in text.splitlines():
            for match in re.finditer(rf"plmu ({'|'.join(SUBCOMMANDS)})\b([^`#]*)", line):
                flags = re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", match.group(2))
                found.append((path.name, match.group(1), flags))
    return found


def test_documented_cli_flags_exist():
    from plmu.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {
        name: {s for action in sub._actions for s in action.option_strings}
        for name, sub in subparsers.choices.items()
    }
    commands = _documented_commands()
    assert len(commands) > 20
    unknown = [
        (f, sub, flag) for f, sub, flags in commands for flag in flags if flag not in options[sub]
    ]
    assert not unknown


def test_design_signatures():
    """The public names and defaults that DESIGN.md fixes."""
    import plmu

    def params(obj):
        return {
            name: p.default
            for name, p in inspect.signature(obj).parameters.items()
            if name != "self" and p.kind is not p.VAR_KEYWORD
        }

    E = inspect.Parameter.empty
    assert params(plmu.legendre_delay) == {"order": E}
    assert params(plmu.discretize) == {"A": E, "B": E, "theta": E, "method": "zoh"}
    assert params(plmu.impulse_response) == {"Abar": E, "Bbar": E, "length": E}
    expected = {
        plmu.LegendreMemory: ["memory_size", "order", "theta", "discretizer", "trainable_theta"],
        plmu.ParallelLMU: ["input_size", "hidden_size", "order", "theta", "memory_size"],
        plmu.LMU: ["input_size", "hidden_size", "order", "theta", "memory_size"],
        plmu.LMUCell: ["input_size", "hidden_size", "order", "theta", "memory_size"],
    }
    for cls, names in expected.items():
        assert list(params(cls))[: len(names)] == names, cls
    assert params(plmu.LegendreMemory)["discretizer"] == "zoh"
    assert params(plmu.LegendreMemory)["trainable_theta"] is False
    assert params(plmu.ParallelLMU)["memory_size"] == 1
    assert params(plmu.ParallelLMU)["return_sequences"] is True
    assert params(plmu.LMU)["memory_size"] == 1
    for cls in (plmu.LegendreMemory, plmu.ParallelLMU):
        assert params(cls.forward)["state"] is None
        assert params(cls.step)["state"] is None
    assert params(plmu.LMU.forward)["state"] is None
