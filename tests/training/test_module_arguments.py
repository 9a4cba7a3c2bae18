"""The training modules' numeric arguments: a wrong type is a TypeError naming the argument,
a value out of range a ValueError naming it (they failed in a comparison without a name, or a
``str``/``float`` passed through ``float()``/``int()``)."""

from __future__ import annotations

import pytest
from torch import nn

from plmu.training.classification import SequenceClassification
from plmu.training.language_modeling import LanguageModeling
from plmu.training.regression import SequenceRegression


def _make(module: str, **settings):
    net = nn.Linear(2, 2)
    if module == "classification":
        return SequenceClassification(net, **{"num_classes": 2, "lr": 1e-3, **settings})
    if module == "language_modeling":
        return LanguageModeling(net, **{"lr": 1e-3, **settings})
    return SequenceRegression(net, **{"lr": 1e-3, **settings})


@pytest.mark.parametrize("module", ["classification", "language_modeling", "regression"])
@pytest.mark.parametrize(
    ("argument", "value", "error", "message"),
    [
        ("lr", "1e-3", TypeError, "lr must be a number, got str"),
        ("lr", True, TypeError, "lr must be a number, got bool"),
        ("lr", float("inf"), ValueError, "lr must be finite and > 0"),
        ("lr", 0.0, ValueError, "lr must be finite and > 0"),
        ("weight_decay", "0.1", TypeError, "weight_decay must be a number, got str"),
        ("weight_decay", float("nan"), ValueError, "weight_decay must be finite and >= 0"),
    ],
)
def test_a_bad_learning_rate_or_weight_decay_is_named(module, argument, value, error, message):
    with pytest.raises(error, match=message):
        _make(module, **{argument: value})


@pytest.mark.parametrize(
    ("module", "argument", "value", "error", "message"),
    [
        ("language_modeling", "warmup_steps", 2.5, TypeError, "warmup_steps must be an int"),
        ("language_modeling", "warmup_steps", "10", TypeError, "warmup_steps must be an int"),
        ("language_modeling", "warmup_steps", -1, ValueError, "warmup_steps must be >= 0"),
        ("classification", "num_classes", 2.0, TypeError, "num_classes must be an int"),
        ("classification", "num_classes", "3", TypeError, "num_classes must be an int"),
        ("classification", "num_classes", 1, ValueError, "num_classes must be >= 2"),
    ],
)
def test_a_bad_integer_setting_is_named(module, argument, value, error, message):
    with pytest.raises(error, match=message):
        _make(module, **{argument: value})


def test_good_settings_are_kept_as_numbers():
    module = _make("language_modeling", lr=1, weight_decay=0, warmup_steps=3)
    assert (module.lr, module.weight_decay, module.warmup_steps) == (1.0, 0.0, 3)
    assert _make("classification", num_classes=3).num_classes == 3
