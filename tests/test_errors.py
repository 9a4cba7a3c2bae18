"""Every bad input listed in DESIGN.md raises a clear error naming the argument."""

import numpy as np
import pytest
import torch

import plmu
from plmu.legendre import discretize_torch


@pytest.fixture
def layer():
    return plmu.ParallelLMU(3, 5, 4, 10.0, memory_size=2)


@pytest.fixture
def mem():
    return plmu.LegendreMemory(2, 4, 10.0)


def test_wrong_rank(layer):
    with pytest.raises(ValueError, match=r"x must have shape \(batch, time, 3\).*rank 2"):
        layer(torch.randn(7, 3))


def test_wrong_feature_size(layer):
    with pytest.raises(ValueError, match=r"x must have shape \(batch, time, 3\).*4 != 3"):
        layer(torch.randn(2, 7, 4))


def test_state_of_wrong_shape(layer):
    with pytest.raises(ValueError, match=r"state must have shape \(2, 8\)"):
        layer(torch.randn(2, 7, 3), torch.randn(2, 7))


def test_state_not_a_tensor(layer):
    with pytest.raises(TypeError, match=r"state must be a torch\.Tensor"):
        layer(torch.randn(2, 7, 3), [[0.0] * 8] * 2)


def test_non_float_input(layer):
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        layer(torch.ones(2, 7, 3, dtype=torch.long))


def test_non_float_state(layer):
    with pytest.raises(TypeError, match="state must have a floating dtype"):
        layer(torch.randn(2, 7, 3), torch.zeros(2, 8, dtype=torch.int32))


def test_non_tensor_input(layer):
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        layer([[[0.0, 1.0, 2.0]]])


def test_step_wrong_shape(layer):
    with pytest.raises(ValueError, match=r"x_t must have shape \(batch, 3\)"):
        layer.step(torch.randn(2, 1, 3))


def test_memory_wrong_channels(mem):
    with pytest.raises(ValueError, match=r"u must have shape \(batch, time, 2\)"):
        mem(torch.randn(2, 7, 3))


def test_memory_step_wrong_state(mem):
    with pytest.raises(ValueError, match=r"state must have shape \(2, 8\)"):
        mem.step(torch.randn(2, 2), torch.randn(3, 8))


@pytest.mark.parametrize("theta", [0.0, -5.0])
def test_theta_not_positive(theta):
    with pytest.raises(ValueError, match="theta"):
        plmu.ParallelLMU(3, 5, 4, theta)
    with pytest.raises(ValueError, match="theta"):
        plmu.LMU(3, 5, 4, theta)


def test_theta_not_a_number():
    with pytest.raises(TypeError, match="theta"):
        plmu.LegendreMemory(1, 4, "long")


# every public entry that takes theta (or order, memory_size), called with one of them replaced
_ENTRIES = {
    "LegendreMemory": lambda order=4, theta=10.0, memory_size=1: plmu.LegendreMemory(
        memory_size, order, theta
    ),
    "ParallelLMU": lambda order=4, theta=10.0, memory_size=1: plmu.ParallelLMU(
        1, 4, order, theta, memory_size=memory_size
    ),
    "LMUCell": lambda order=4, theta=10.0, memory_size=1: plmu.LMUCell(
        1, 4, order, theta, memory_size=memory_size
    ),
    "LMU": lambda order=4, theta=10.0, memory_size=1: plmu.LMU(
        1, 4, order, theta, memory_size=memory_size
    ),
}


@pytest.mark.parametrize("entry", [*_ENTRIES, "discretize", "discretize_torch"])
@pytest.mark.parametrize(
    "theta",
    [
        "10",
        b"10",
        True,
        np.bool_(True),
        None,
        1j,
        torch.tensor([10.0]),
        np.array([10.0]),
        torch.tensor(True),
    ],
    ids=repr,
)
def test_theta_of_wrong_type(entry, theta):
    """float() would take "10" and True; a theta that is not a real scalar is a TypeError."""
    with pytest.raises(TypeError, match="theta"):
        if entry == "discretize":
            plmu.discretize(*plmu.legendre_delay(4), theta)
        elif entry == "discretize_torch":
            A, B = (torch.from_numpy(a) for a in plmu.legendre_delay(4))
            discretize_torch(A, B, theta)
        else:
            _ENTRIES[entry](theta=theta)


@pytest.mark.parametrize("entry", _ENTRIES)
@pytest.mark.parametrize(
    "theta",
    [
        10,
        10.0,
        np.float32(10.0),
        np.int64(10),
        np.array(10.0),
        torch.tensor(10.0),
        torch.tensor(10),
    ],
    ids=repr,
)
def test_theta_real_scalars_accepted(entry, theta):
    module = _ENTRIES[entry](theta=theta)
    memory = next(m for m in module.modules() if isinstance(m, plmu.LegendreMemory))
    assert memory.theta == 10.0


@pytest.mark.parametrize(
    ("entry", "name"),
    [(entry, name) for entry in _ENTRIES for name in ("order", "memory_size")]
    + [("legendre_delay", "order")],
)
@pytest.mark.parametrize("value", [True, "4", 4.0, np.float64(4.0), None], ids=repr)
def test_order_and_memory_size_of_wrong_type(entry, name, value):
    with pytest.raises(TypeError, match=name):
        if entry == "legendre_delay":
            plmu.legendre_delay(value)
        else:
            _ENTRIES[entry](**{name: value})


@pytest.mark.parametrize("order", [0, -1])
def test_order_below_one(order):
    with pytest.raises(ValueError, match="order"):
        plmu.ParallelLMU(3, 5, order, 10.0)
    with pytest.raises(ValueError, match="order"):
        plmu.LMU(3, 5, order, 10.0)


def test_order_not_int():
    with pytest.raises(TypeError, match="order"):
        plmu.LegendreMemory(1, 2.5, 10.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"memory_size": 0}, r"memory_size must be >= 1, got 0"),
        ({"mode": "turbo"}, r"mode must be one of \(.*'fused'\), got 'turbo'"),
        ({"discretizer": "rk4"}, r"discretizer must be one of \('zoh', .*\), got 'rk4'"),
        ({"hidden_activation": "swishy"}, r"hidden_activation must be one of \[.*'relu'.*\]"),
        ({"dropout": 1.5}, r"dropout must lie in \[0, 1\), got 1.5"),
        ({"dropout": -0.1}, r"dropout must lie in \[0, 1\), got -0.1"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\), got 1.0"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    """The layer's own message, from its start: ``match="dropout"`` alone also took torch's
    ``nn.Dropout`` error, so the layer's check could go unnoticed; dropout 1.0, which torch
    accepts (every output zero), was not tried."""
    with pytest.raises(ValueError, match=f"^{match}"):
        plmu.ParallelLMU(3, 5, 4, 10.0, **kwargs)


def test_hidden_size_zero():
    with pytest.raises(ValueError, match="hidden_size"):
        plmu.ParallelLMU(3, 0, 4, 10.0)


@pytest.mark.parametrize(
    ("lengths", "error", "match"),
    [
        (torch.tensor([7, 0]), ValueError, r"lengths must lie in \[1, 7\]"),
        (torch.tensor([7, 8]), ValueError, r"lengths must lie in \[1, 7\]"),
        (torch.tensor([7]), ValueError, r"lengths must have shape \(2,\)"),
        (torch.tensor([7.0, 3.0]), TypeError, "lengths must hold integers"),
    ],
)
def test_bad_lengths(layer, lengths, error, match):
    with pytest.raises(error, match=match):
        layer(torch.randn(2, 7, 3), lengths=lengths)


def test_empty_sequence(layer):
    with pytest.raises(ValueError, match="at least one time step"):
        layer(torch.randn(2, 0, 3))


def test_lmu_bad_state(layer):
    rnn = plmu.LMU(3, 5, 4, 10.0)
    with pytest.raises(TypeError, match=r"state must be a tuple \(h, m\)"):
        rnn(torch.randn(2, 7, 3), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"state\[1\] \(m\) must have shape \(2, 4\)"):
        rnn(torch.randn(2, 7, 3), (torch.zeros(2, 5), torch.zeros(2, 3)))


def test_lmu_unknown_init():
    with pytest.raises(ValueError, match="init"):
        plmu.LMU(3, 5, 4, 10.0, init="magic")


@pytest.mark.parametrize(
    ("m", "r", "match"),
    [
        ([[0.0] * 4], 1.5, r"r must lie in \[0, 1\]"),
        ([[0.0] * 4], [-0.1, 0.5], r"r must lie in \[0, 1\]"),
        ([[0.0] * 4], [[0.5]], r"r must be a scalar or have shape \(k,\)"),
        (0.0, 0.5, r"m must have shape \(\.\.\., order\)"),
    ],
)
def test_decode_bad_arguments(m, r, match):
    with pytest.raises(ValueError, match=match):
        plmu.decode(m, r)


# ------------------------------------------------------------------ token ids of the models


def _token_models():
    from plmu.models.language_model import LMULanguageModel
    from plmu.models.seq2seq import LMUSeq2Seq
    from plmu.models.text import PairClassifier, TextClassifier

    encoder = dict(vocab_size=10, embedding_dim=4, hidden_size=4, order=4, theta=8.0)
    return (
        LMULanguageModel(10, 8, 1, order=4, theta=8.0),
        TextClassifier(2, **encoder),
        PairClassifier(3, mlp_hidden=4, **encoder),
        LMUSeq2Seq(10, 12, d_model=8, order=4, theta=8.0, encoder_layers=1, decoder_layers=1),
    )


def _token_calls(ids):
    """(call, argument name, vocabulary size) for every model input that holds token ids,
    ``ids`` ``(2, 3)`` standing in for that input (the others valid)."""
    from plmu.generation import iter_tokens

    lm, clf, pair, s2s = _token_models()
    good = torch.ones(2, 3, dtype=torch.long)
    lengths = torch.tensor([3, 2])
    enc, mask = s2s.encode(good, lengths)
    return [
        (lambda: lm(ids), "tokens", 10),
        (lambda: lm.step(ids[:, 0]), "token", 10),
        (lambda: next(iter_tokens(lm, ids[0], 1)), "prompt", 10),
        (lambda: clf(ids, lengths), "ids", 10),
        (lambda: pair(ids, lengths, good, lengths), "ids_a", 10),
        (lambda: pair(good, lengths, ids, lengths), "ids_b", 10),
        (lambda: s2s.encode(ids, lengths), "src", 10),
        (lambda: s2s(ids, lengths, good), "src", 10),
        (lambda: s2s(good, lengths, ids), "tgt_in", 12),
        (lambda: s2s.decode_parallel(ids, enc, mask), "tgt_in", 12),
        (lambda: s2s.decode_step(ids[:, 0], [None], enc, mask), "y_prev", 12),
        (lambda: s2s.greedy(ids, lengths, 2), "src", 10),
    ]


@pytest.mark.parametrize("bad", [-1, "vocab"])
@pytest.mark.parametrize("index", range(12))
def test_token_ids_out_of_range(index, bad):
    """A ValueError naming the argument and the range, not an IndexError inside nn.Embedding."""
    ids = torch.ones(2, 3, dtype=torch.long)
    call, name, vocab = _token_calls(ids)[index]
    ids[0, 0] = vocab if bad == "vocab" else bad
    with pytest.raises(ValueError, match=rf"^{name} must hold token ids in \[0, {vocab}\)"):
        call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
@pytest.mark.parametrize("index", range(12))
def test_token_ids_of_non_integer_dtype(index, dtype):
    call, name, _ = _token_calls(torch.ones(2, 3, dtype=dtype))[index]
    with pytest.raises(TypeError, match=rf"^{name} must hold integer token ids"):
        call()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
@pytest.mark.parametrize("index", range(12))
def test_token_ids_of_any_integer_dtype_work(index, dtype):
    call, _, _ = _token_calls(torch.ones(2, 3, dtype=dtype))[index]
    call()


# ------------------------------------------------------------------ integer sizes of the models

_ENCODER = {"vocab_size": 10, "embedding_dim": 4, "hidden_size": 4, "order": 4, "theta": 8.0}
_SEQUENCE = {"input_size": 2, "hidden_size": 4, "num_layers": 1, "order": 4, "theta": 8.0}
_ENCODER_SIZES = ("vocab_size", "embedding_dim", "hidden_size", "num_layers")
_SEQUENCE_SIZES = ("input_size", "hidden_size", "num_layers")

# every model of plmu.models: (constructor name, valid keyword arguments, its integer sizes)
_SIZED_MODELS = {
    "LMULanguageModel": (
        "language_model.LMULanguageModel",
        {"vocab_size": 10, "d_model": 8, "num_layers": 1, "order": 4, "theta": 8.0},
        ("vocab_size", "d_model", "num_layers"),
    ),
    "LMUSeq2Seq": (
        "seq2seq.LMUSeq2Seq",
        {"src_vocab_size": 10, "tgt_vocab_size": 12, "d_model": 8, "order": 4, "theta": 8.0},
        ("src_vocab_size", "tgt_vocab_size", "d_model", "encoder_layers", "decoder_layers"),
    ),
    "SentenceEncoder": ("text.SentenceEncoder", _ENCODER, _ENCODER_SIZES),
    "SentenceEncoder-lstm": ("text.SentenceEncoder", {**_ENCODER, "model": "lstm"}, _ENCODER_SIZES),
    "TextClassifier": (
        "text.TextClassifier",
        {**_ENCODER, "num_classes": 2},
        ("num_classes", *_ENCODER_SIZES),
    ),
    "PairClassifier": (
        "text.PairClassifier",
        {**_ENCODER, "num_classes": 3, "mlp_hidden": 4},
        ("num_classes", "mlp_hidden", *_ENCODER_SIZES),
    ),
    "SequenceClassifier": (
        "classifier.SequenceClassifier",
        {**_SEQUENCE, "num_classes": 3, "model": "parallel-lmu"},
        ("num_classes", *_SEQUENCE_SIZES),
    ),
    "SequenceClassifier-lstm": (
        "classifier.SequenceClassifier",
        {**_SEQUENCE, "num_classes": 3, "model": "lstm"},
        ("num_classes", *_SEQUENCE_SIZES),
    ),
    "SequenceRegressor": (
        "regressor.SequenceRegressor",
        {**_SEQUENCE, "output_size": 1, "model": "lmu"},
        ("output_size", *_SEQUENCE_SIZES),
    ),
    "RecurrentStack-lstm": (
        "stack.RecurrentStack",
        {**_SEQUENCE, "model": "lstm"},
        _SEQUENCE_SIZES,
    ),
}


def _build_model(key: str, **changed):
    import importlib

    path, kwargs, _ = _SIZED_MODELS[key]
    module, name = path.split(".")
    constructor = getattr(importlib.import_module(f"plmu.models.{module}"), name)
    return constructor(**{**kwargs, **changed})


_SIZES = [(key, name) for key, (_, _, names) in _SIZED_MODELS.items() for name in names]


@pytest.mark.parametrize(("key", "name"), _SIZES, ids=[f"{k}.{n}" for k, n in _SIZES])
def test_model_size_of_wrong_type(key, name):
    """A TypeError naming the argument (LMULanguageModel and LMUSeq2Seq raised ValueError, other
    models torch's TypeError naming no argument, or built a model from True)."""
    for value in (1.5, 2.0, True, "3", None):
        with pytest.raises(TypeError, match=rf"^{name} must be an int >= \d+, got "):
            _build_model(key, **{name: value})


@pytest.mark.parametrize(("key", "name"), _SIZES, ids=[f"{k}.{n}" for k, n in _SIZES])
def test_model_size_below_its_minimum(key, name):
    """A ValueError naming the argument (not an IndexError, a RuntimeError or a model with zero
    classes); a seq2seq vocabulary must hold the 4 special tokens."""
    smallest = 4 if name.endswith("vocab_size") and key == "LMUSeq2Seq" else 1
    for value in (smallest - 1, -1):
        with pytest.raises(ValueError, match=rf"^{name} must be >= {smallest}, got {value}$"):
            _build_model(key, **{name: value})
    _build_model(key, **{name: smallest})


@pytest.mark.parametrize(("key", "name"), _SIZES, ids=[f"{k}.{n}" for k, n in _SIZES])
def test_model_size_numpy_integer_accepted(key, name):
    """NumPy integers are ints, as for the layers (torch's LSTM refused them)."""
    _build_model(key, **{name: np.int64(5)})
