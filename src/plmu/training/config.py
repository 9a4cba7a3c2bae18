"""Experiment configs: flat dicts read from YAML.

A run's config is built in layers, each later one overriding the earlier:

1. :data:`RUNNER_DEFAULTS` (Trainer-level keys every experiment accepts);
2. the packaged ``src/plmu/configs/<experiment>.yaml`` (the paper's hyperparameters), or the
   config stored in a checkpoint when a run is resumed;
3. an optional user YAML file (``--config FILE``; may set any subset of the keys);
4. ``--set key=value`` overrides, values parsed as YAML scalars (``--set lr=3e-4``,
   ``--set model=lstm``, ``--set patience=null``).

Unknown keys are rejected (with the closest known key suggested) and a value must have the type
of the key's default (an int where a float is expected is accepted; a float must be finite;
seeds must be >= 0; ``epochs`` >= 1, ``max_steps`` >= 1 or -1, ``limit_train_batches`` > 0,
so that a run trains, ``limit_test_batches`` > 0, so that it tests), so a typo never trains a
silently different model. The experiments' model, data and decoding keys (``order``,
``theta``, ``dropout``, ``model``, ``vocab_size``, ...) are checked here too, by the rules of the
constructors they reach, so a bad value is refused naming its config key before any data is
read (see :data:`_MINIMUM`).

A resumed run may change only the keys in :data:`RESUME_KEYS` (the runner refuses any other
change, see :func:`plmu.training.runner.train`).
"""

from __future__ import annotations

import difflib
import math
import typing
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from plmu.data import not_utf8

__all__ = [
    "REQUIRED_KEYS",
    "RESUME_KEYS",
    "RUNNER_DEFAULTS",
    "ConfigError",
    "default_config",
    "load_config",
    "merge_config",
    "parse_override",
    "read_config_file",
]

REQUIRED_KEYS = ("epochs", "batch_size", "lr", "seed")

RUNNER_DEFAULTS: dict[str, Any] = {
    "precision": "32-true",  # Lightning precision, e.g. "bf16-mixed", "16-mixed"
    "gradient_clip_val": None,  # clip the gradient norm to this value
    "accumulate_grad_batches": 1,
    "max_steps": -1,  # stop after this many optimizer steps (-1: run all epochs)
    "limit_train_batches": None,  # int (batches) or float (fraction) per epoch; None = all
    "limit_val_batches": None,
    "limit_test_batches": None,
    "patience": None,  # early stopping on the monitored validation metric (epochs)
    "num_workers": 0,  # DataLoader worker processes
    "num_threads": None,  # torch intra-op threads per process (None: torch's default)
    "log_every_n_steps": 10,
    # also write last.ckpt every this many optimizer steps (None: at epoch ends only); a run
    # resumed from such a checkpoint reads the rest of that epoch
    "checkpoint_every_n_steps": None,
}

# The keys a resumed run may set to other values than its checkpoint's config: they change how
# long it trains, when it saves or stops early, and how it reads data and logs, not what a step
# computes (a schedule set by the total step count, like text8's cosine decay, follows a new
# ``epochs`` or ``max_steps`` from the resumed step on). Every other key changes the data, the
# task, the model, the optimisation or the order and count of the batches (the seeds,
# ``batch_size``, ``accumulate_grad_batches``, ``precision``, ``limit_*_batches``, ...): resumed
# with it, the run would not train on as the uninterrupted run would have.
RESUME_KEYS = frozenset(
    {
        "epochs",
        "max_steps",
        "patience",
        "checkpoint_every_n_steps",
        "num_workers",
        "num_threads",
        "log_every_n_steps",
    }
)

# What the keys without a default accept besides null (any value would pass otherwise): the
# runner's, and IWSLT's hub revision (a git ref: `hf_revision=1234567`, a short commit hash
# YAML reads as an int, reached the hub as one).
_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "hf_revision": (str,),
    "gradient_clip_val": (int, float),
    "limit_train_batches": (int, float),
    "limit_val_batches": (int, float),
    "limit_test_batches": (int, float),
    "patience": (int,),
    "num_threads": (int,),
    "checkpoint_every_n_steps": (int,),
}

# The smallest values of the keys the Trainer does not check itself (epochs=-1 trains forever;
# gradient_clip_val=-1 quietly did not clip, as 0 and null do), of the seeds (NumPy's
# generators, which Lightning and the data pipelines seed, refuse a negative one with a message
# that does not name the key), and of the run's length: epochs=0 and max_steps=0 trained
# nothing, then tested the untrained weights into metrics.json as a finished run's (a resumed
# run that has reached its epochs or max_steps, or whose new value lies below them, still only
# tests: a larger one continues it).
#
# The experiments' model, data and decoding keys follow: the same rules as the constructors
# they reach (LegendreMemory, the layers and networks, the datamodules, TranslationModule),
# which named only their own argument ("order must be >= 1"), not the config key, and most
# only once the data had been read or downloaded. A key means the same in every experiment
# that has it; one an experiment's model does not use (lmu_order for model=lstm) is checked
# too. vocab_size: the text tasks' [PAD], [UNK] and a word (IWSLT's BPE keeps its 4 special
# tokens and the alphabet whatever it is given).
_MINIMUM: dict[str, int] = {
    "epochs": 1,
    "max_steps": 1,
    "gradient_clip_val": 0,
    "accumulate_grad_batches": 1,
    "patience": 0,
    "checkpoint_every_n_steps": 1,
    "seed": 0,
    "data_seed": 0,
    "permutation_seed": 0,
    "weight_decay": 0,
    # checked by the datamodules, or by Lightning only as the Trainer is built, after the data
    "batch_size": 1,
    "num_workers": 0,
    "log_every_n_steps": 1,
    "limit_val_batches": 0,
    # networks
    **dict.fromkeys(
        (
            "order",
            "lmu_order",
            "hidden_size",
            "lmu_hidden_size",
            "lstm_hidden_size",
            "memory_size",
            "num_layers",
            "embedding_dim",
            "mlp_hidden",
            "d_model",
            "encoder_layers",
            "decoder_layers",
        ),
        1,
    ),
    "dropout": 0,
    # data
    **dict.fromkeys(
        (
            "max_length",
            "max_source_length",
            "max_target_length",
            "min_frequency",
            "seq_len",
            "val_size",
            "horizon",
            "window",
            "stride",
            "plot_steps",
        ),
        1,
    ),
    "vocab_size": 3,
    "warmup": 0,
    # optimisation and decoding
    "warmup_steps": 0,
    "lr_decay_after": 0,
    "label_smoothing": 0,
    "beam_size": 1,
    "length_penalty": 0,
    "max_len_ratio": 0,
    "max_len_offset": 0,
    "max_decode_length": 1,
}

# The largest values: Lightning's seed_everything refuses a seed NumPy cannot take.
_MAXIMUM: dict[str, int] = {"seed": 2**32 - 1, "lr_decay": 1}

# A value allowed below a key's minimum, and what it means: Lightning's "no limit".
_UNLIMITED: dict[str, int] = {"max_steps": -1}

# Keys that must be > 0 where set, and what their value means. limit_train_batches=0 trained no
# batch, as above, and limit_test_batches=0 tested none: metrics.json had no test metric, yet
# read as a finished run's (limit_val_batches=0 is Lightning's "no validation": best.ckpt is
# not written and the last weights are tested; load_config refuses it with patience).
_LIMIT = " (an int: batches, a float: a fraction of them; null: all)"
_ABOVE_ZERO: dict[str, str] = {
    "limit_train_batches": _LIMIT,
    "limit_test_batches": _LIMIT,
    "lr": "",
    "theta": "",
    "lmu_theta": "",
    "lr_decay": "",
    "val_fraction": "",
}

# Keys that must lie below a value (probabilities, fractions).
_BELOW: dict[str, int] = {"dropout": 1, "label_smoothing": 1, "val_fraction": 1}

# Lightning's batch limits: an int counts batches, a float is a fraction of them, at most 1.0.
_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches")


def _choices(key: str) -> tuple[str, ...] | None:
    """The values a key naming a choice accepts (``None``: any value of its type)."""
    if key == "model":
        from plmu.models.stack import MODELS

        return tuple(sorted(MODELS))
    if key == "hidden_activation":
        from plmu.layers import ACTIVATIONS

        return tuple(sorted(ACTIVATIONS))
    if key == "lmu_init":
        from plmu.layers import LMU_INITS

        return LMU_INITS
    if key == "bleu_tokenize":
        import sacrebleu

        return tuple(sorted(sacrebleu.BLEU.TOKENIZERS))
    if key == "precision":
        return _precisions()
    return {"truncation_side": ("left", "right")}.get(key)


def _precisions() -> tuple[str, ...] | None:
    """The precision names Lightning's Trainer takes (``None``, no check, where this Lightning
    does not list them where 2.x does)."""
    try:
        from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT
    except ImportError:
        return None
    names: list[str] = []
    pending = [_PRECISION_INPUT]
    while pending:
        for arg in typing.get_args(pending.pop()):
            if isinstance(arg, str):
                names.append(arg)
            elif not isinstance(arg, int):
                pending.append(arg)
    return tuple(sorted(names)) or None


class ConfigError(ValueError):
    """A config file or an override is malformed, names an unknown key or has a wrong type."""

    @classmethod
    def naming_key(cls, error: Exception) -> ConfigError:
        """``error``, whose message starts with the setting it is about (``"val_size must lie
        in ..."``, as a data or generation function names its argument), as the config key's
        error (``"config key 'val_size' must lie in ..."``)."""
        key, _, rule = str(error).partition(" ")
        return cls(f"config key {key!r} {rule}")


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping repeating a key (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor": keys beside it override the merged ones by design
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the SafeLoader refuses it itself
                continue
            if repeated:
                raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def default_config(experiment: str) -> dict[str, Any]:
    """The packaged config of ``experiment`` merged over :data:`RUNNER_DEFAULTS`."""
    resource = resources.files("plmu") / "configs" / f"{experiment}.yaml"
    if not resource.is_file():
        raise ConfigError(f"no packaged config for experiment {experiment!r} ({resource})")
    text = resource.read_text(encoding="utf-8")
    values = _parse_mapping(text, f"packaged config {experiment}.yaml")
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise ConfigError(f"packaged config {experiment}.yaml lacks the keys {missing}")
    return {**RUNNER_DEFAULTS, **values}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of config keys from ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {not_utf8(path)}") from None
    return _parse_mapping(text, f"config file {path}")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override; the value is read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML") from None
    if isinstance(value, (dict, list)):
        raise ConfigError(f"--set {key}: expected a scalar value, got {raw!r}")
    return key, value


def merge_config(
    base: Mapping[str, Any], updates: Mapping[str, Any], source: str
) -> dict[str, Any]:
    """Return ``base`` updated by ``updates``, checking keys and types (``source`` names them)."""
    merged = dict(base)
    for key, value in updates.items():
        if key not in base:
            close = difflib.get_close_matches(key, list(base), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown config key {key!r} in {source}{hint} "
                f"(known keys: {', '.join(sorted(base))})"
            )
        merged[key] = _coerce(key, value, base[key], source)
        if isinstance(merged[key], float) and not math.isfinite(merged[key]):
            # YAML's .inf and .nan, or "inf" read as a float: no key means anything by one
            # (lr=.inf trained to NaN)
            raise ConfigError(f"config key {key!r} in {source} must be finite, got {value!r}")
        minimum, maximum = _MINIMUM.get(key), _MAXIMUM.get(key)
        unlimited = _UNLIMITED.get(key)
        too_small = minimum is not None and merged[key] is not None and merged[key] < minimum
        if too_small and merged[key] != unlimited:
            meaning = "" if unlimited is None else f", or {unlimited} for no limit"
            raise ConfigError(
                f"config key {key!r} in {source} must be >= {minimum}{meaning}, got {merged[key]!r}"
            )
        if key in _ABOVE_ZERO and merged[key] is not None and merged[key] <= 0:
            raise ConfigError(
                f"config key {key!r} in {source} must be > 0{_ABOVE_ZERO[key]}, got {merged[key]!r}"
            )
        if maximum is not None and merged[key] is not None and merged[key] > maximum:
            raise ConfigError(
                f"config key {key!r} in {source} must be <= {maximum}, got {merged[key]!r}"
            )
        if key in _LIMITS and isinstance(merged[key], float) and merged[key] > 1.0:
            raise ConfigError(
                f"config key {key!r} in {source} must be <= 1.0 as a fraction of the batches "
                f"(an int counts them), got {merged[key]!r}"
            )
        if key in _BELOW and merged[key] is not None and merged[key] >= _BELOW[key]:
            raise ConfigError(
                f"config key {key!r} in {source} must be < {_BELOW[key]}, got {merged[key]!r}"
            )
        choices = _choices(key) if isinstance(merged[key], str) else None
        if choices is not None and merged[key] not in choices:
            raise ConfigError(
                f"config key {key!r} in {source} must be one of {list(choices)}, "
                f"got {merged[key]!r}"
            )
        if key == "bleu_tokenize" and isinstance(merged[key], str):
            from plmu.training.translation import bleu_tokenizer_problem

            problem = bleu_tokenizer_problem(merged[key])
            if problem is not None:
                raise ConfigError(
                    f"config key {key!r} in {source}: {merged[key]!r} cannot run here: {problem}"
                )
    return merged


def load_config(
    experiment: str,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a run's config: defaults (or ``base``), then ``config_file``, then ``overrides``.

    Args:
        experiment: the experiment name; its packaged YAML gives the defaults and the known keys.
        config_file: optional YAML file with any subset of the keys.
        overrides: ``"key=value"`` strings (``--set``).
        base: a full config to start from instead of the packaged one (a resumed run's
            checkpoint config); keys the packaged config gained since are filled in.
    """
    config = default_config(experiment)
    if base is not None:
        config = {**config, **base}
    if config_file is not None:
        config = merge_config(config, read_config_file(config_file), f"config file {config_file}")
    parsed = dict(parse_override(text) for text in overrides)
    config = merge_config(config, parsed, "--set")
    if config.get("patience") is not None and config.get("limit_val_batches") == 0:
        # Lightning's EarlyStopping raised a RuntimeError (a traceback) after the first epoch
        raise ConfigError(
            "config key 'patience' needs validation, which limit_val_batches=0 turns off: "
            "set patience=null or a limit_val_batches > 0"
        )
    return config


def _parse_mapping(text: str, source: str) -> dict[str, Any]:
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except _DuplicateKeyError as error:
        raise ConfigError(f"{source} repeats the key {error.key!r} (line {error.line})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{source} is not valid YAML{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise ConfigError(f"{source} must be a mapping of key: value pairs")
    return values


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check ``value`` against the type of ``default`` (None accepts anything, except for the
    runner keys in :data:`_OPTIONAL_TYPES`)."""
    if default is None:
        types = _OPTIONAL_TYPES.get(key)
        if value is None or types is None:
            return value
        if isinstance(value, types) and not isinstance(value, bool):
            return value
        names = " or ".join(t.__name__ for t in types)
        quote = f"; quote one YAML reads otherwise: {key}=\"'...'\"" if types == (str,) else ""
        raise ConfigError(
            f"config key {key!r} in {source} expects {names} or null, "
            f"got {value!r} ({type(value).__name__}){quote}"
        )
    expected = type(default).__name__
    if value is None:
        raise ConfigError(f"config key {key!r} in {source} cannot be null (expected {expected})")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(
        f"config key {key!r} in {source} expects {expected} (default {default!r}), "
        f"got {value!r} ({type(value).__name__})"
    )
