import re
from importlib.resources import files
from pathlib import Path

import pytest

from plmu.training.config import (
    REQUIRED_KEYS,
    ConfigError,
    default_config,
    load_config,
    merge_config,
    parse_override,
)


@pytest.mark.parametrize("name", ["mackey-glass", "psmnist"])
def test_packaged_configs_have_required_keys(name: str) -> None:
    config = default_config(name)
    assert all(key in config for key in REQUIRED_KEYS)
    assert config["model"] == "parallel-lmu"


def test_overrides_are_yaml_scalars() -> None:
    config = load_config("mackey-glass", overrides=["lr=1e-3", "epochs=7", "model=lstm"])
    assert config["lr"] == 0.001 and isinstance(config["lr"], float)
    assert config["epochs"] == 7 and config["model"] == "lstm"
    assert load_config("mackey-glass", overrides=["theta=8"])["theta"] == 8.0
    assert load_config("mackey-glass", overrides=["patience=3"])["patience"] == 3
    assert load_config("mackey-glass", overrides=["patience=null"])["patience"] is None
    half = load_config("mackey-glass", overrides=["limit_train_batches=0.5"])
    assert half["limit_train_batches"] == 0.5
    assert load_config("mackey-glass")["checkpoint_every_n_steps"] is None  # epoch ends only
    steps = load_config("mackey-glass", overrides=["checkpoint_every_n_steps=500"])
    assert steps["checkpoint_every_n_steps"] == 500


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr' in --set; did you mean 'lr'"):
        load_config("mackey-glass", overrides=["lrr=0.1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=1.5", "'epochs' in --set expects int"),
        ("lr=fast", "'lr' in --set expects float"),
        ("epochs=null", "cannot be null"),
        ("model=[1, 2]", "expected a scalar"),
        ("patience=abc", "'patience' in --set expects int or null"),
        ("limit_train_batches=all", "'limit_train_batches' in --set expects int or float"),
        ("epochs=-1", "'epochs' in --set must be >= 1"),  # Lightning: train forever
        ("accumulate_grad_batches=0", "'accumulate_grad_batches' in --set must be >= 1"),
        ("checkpoint_every_n_steps=0", "'checkpoint_every_n_steps' in --set must be >= 1, got 0"),
        ("checkpoint_every_n_steps=-100", "'checkpoint_every_n_steps' in --set must be >= 1"),
        ("checkpoint_every_n_steps=2.5", "'checkpoint_every_n_steps' in --set expects int or null"),
        ("checkpoint_every_n_steps=true", "'checkpoint_every_n_steps' in --set expects int or"),
        ("checkpoint_every_n_steps=often", "'checkpoint_every_n_steps' in --set expects int or"),
        # not finite: lr=.inf trained to NaN, gradient_clip_val=.nan was taken
        ("lr=.inf", "'lr' in --set must be finite, got inf"),
        ("lr=inf", "'lr' in --set must be finite, got 'inf'"),  # a string YAML leaves, made float
        ("theta=-.inf", "'theta' in --set must be finite"),
        ("gradient_clip_val=.nan", "'gradient_clip_val' in --set must be finite"),
        # Lightning skips clipping at a value <= 0: -1 ran unclipped, silently
        ("gradient_clip_val=-1", "'gradient_clip_val' in --set must be >= 0, got -1"),
        # seeds: NumPy's message named no key ("expected non-negative integer")
        ("seed=-1", "'seed' in --set must be >= 0, got -1"),
        ("seed=4294967296", "'seed' in --set must be <= 4294967295"),
        ("data_seed=-1", "'data_seed' in --set must be >= 0, got -1"),
    ],
)
def test_wrong_types_rejected(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("mackey-glass", overrides=[override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=0", "'epochs' in --set must be >= 1, got 0"),
        ("max_steps=0", "'max_steps' in --set must be >= 1, or -1 for no limit, got 0"),
        ("max_steps=-2", "'max_steps' in --set must be >= 1, or -1 for no limit, got -2"),
        ("limit_train_batches=0", "'limit_train_batches' in --set must be > 0 (an int: batches"),
        ("limit_train_batches=0.0", "'limit_train_batches' in --set must be > 0 (an int: batch"),
    ],
)
def test_settings_that_train_nothing_are_refused(override: str, message: str) -> None:
    """``epochs=0``, ``max_steps=0`` and ``limit_train_batches=0`` were taken: the run trained
    nothing, then tested its untrained weights into metrics.json as a finished run's."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("mackey-glass", overrides=[override])
    kept = ["epochs=1", "max_steps=-1", "max_steps=1", "limit_train_batches=1"]
    config = load_config("mackey-glass", overrides=[*kept, "limit_train_batches=0.01"])
    assert config["max_steps"] == 1 and config["limit_train_batches"] == 0.01
    assert load_config("mackey-glass", overrides=kept[:2])["max_steps"] == -1


def test_permutation_seed_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="'permutation_seed' in --set must be >= 0, got -3"):
        load_config("psmnist", overrides=["permutation_seed=-3"])
    assert load_config("psmnist", overrides=["permutation_seed=0"])["permutation_seed"] == 0


def test_largest_seed_accepted() -> None:
    assert load_config("mackey-glass", overrides=["seed=4294967295"])["seed"] == 2**32 - 1


@pytest.mark.parametrize("text", ["epochs", "=3", ""])
def test_malformed_override(text: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_override(text)


def test_config_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "my.yaml"
    path.write_text("epochs: 3\nlr: 0.01\n")
    config = load_config("mackey-glass", path, overrides=["epochs=4"])
    assert (config["epochs"], config["lr"]) == (4, 0.01)


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("mackey-glass", bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config("mackey-glass", bad)
    bad.write_text("epochz: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'epochz' in config file"):
        load_config("mackey-glass", bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("mackey-glass", tmp_path / "missing.yaml")


def test_config_file_not_utf8_is_named(tmp_path: Path) -> None:
    """Was ``'utf-8' codec can't decode byte 0xe9 in position 15``, naming no file."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("epochs: 3\nlr: 0.01  # caf\u00e9\n".encode("latin-1"))
    message = r"config file .*latin1\.yaml: line 2 is not UTF-8 text \(byte 0xe9 at column 16\)"
    with pytest.raises(ConfigError, match=message):
        load_config("mackey-glass", path)
    path.write_text("epochs: 3  # caf\u00e9\n", encoding="utf-8")  # UTF-8 whatever the locale
    assert load_config("mackey-glass", path)["epochs"] == 3


def test_config_file_duplicate_key_refused(tmp_path: Path) -> None:
    # PyYAML keeps the last of two equal keys: epochs: 3 was silently dropped
    path = tmp_path / "dup.yaml"
    path.write_text("epochs: 3\nlr: 0.01\nepochs: 5\n")
    message = r"config file .*dup\.yaml repeats the key 'epochs' \(line 3\)"
    with pytest.raises(ConfigError, match=message):
        load_config("mackey-glass", path)


def test_every_packaged_config_loads() -> None:
    # the packaged configs are read by the same duplicate-refusing loader
    names = [p.name[: -len(".yaml")] for p in (files("plmu") / "configs").iterdir()]
    names = sorted(n for n in names if not n.startswith((".", "_")) and "." not in n)
    assert len(names) >= 7
    for name in names:
        assert all(key in default_config(name) for key in REQUIRED_KEYS), name


def test_base_config_fills_new_keys() -> None:
    base = {"epochs": 9, "lr": 0.5}
    config = load_config("mackey-glass", base=base, overrides=["epochs=10"])
    assert config["epochs"] == 10 and config["lr"] == 0.5 and "window" in config


def test_hub_revision_is_a_string_or_null() -> None:
    """A null default accepted any value: a short commit hash of digits reached the hub as an
    int (and one with a leading 0 as an octal number's value)."""
    with pytest.raises(
        ConfigError, match=r"'hf_revision' in --set expects str or null, got 1234567"
    ):
        load_config("iwslt15-en-vi", overrides=["hf_revision=1234567"])
    with pytest.raises(ConfigError, match="expects str or null, got True"):
        load_config("iwslt15-en-vi", overrides=["hf_revision=true"])
    quoted = load_config("iwslt15-en-vi", overrides=["hf_revision='0123456'"])
    assert quoted["hf_revision"] == "0123456"
    ref = load_config("iwslt15-en-vi", overrides=["hf_revision=refs/convert/parquet"])
    assert ref["hf_revision"] == "refs/convert/parquet"
    assert load_config("iwslt15-en-vi", overrides=["hf_revision=null"])["hf_revision"] is None


@pytest.mark.parametrize(
    "name", ["imdb", "iwslt15-en-vi", "mackey-glass", "psmnist", "qqp", "snli", "text8"]
)
def test_packaged_values_pass_the_rules_of_their_keys(name: str) -> None:
    """Every packaged value is one the range and choice rules accept (given back as a config
    file's, each is checked as a user's would be)."""
    config = default_config(name)
    set_keys = {key: value for key, value in config.items() if value is not None}
    assert merge_config(config, set_keys, "packaged") == config


def test_edge_values_of_the_model_keys_are_accepted() -> None:
    kept = ["dropout=0", "warmup=0", "theta=0.5", "lmu_theta=1e-3", "weight_decay=0"]
    config = load_config("mackey-glass", overrides=kept)
    assert (config["dropout"], config["warmup"], config["theta"]) == (0.0, 0, 0.5)
    edges = ["label_smoothing=0", "lr_decay=1", "vocab_size=3", "max_len_offset=0"]
    assert load_config("iwslt15-en-vi", overrides=edges)["lr_decay"] == 1.0
    assert load_config("imdb", overrides=["val_fraction=0.999"])["val_fraction"] == 0.999
    runner = ["precision=bf16-mixed", "limit_val_batches=1.0", "limit_test_batches=3"]
    assert load_config("psmnist", overrides=runner)["precision"] == "bf16-mixed"
    assert load_config("psmnist", overrides=["precision=16"])["precision"] == "16"  # an alias


def test_a_limit_that_tests_nothing_is_refused() -> None:
    """``limit_test_batches=0`` tested no batch: metrics.json held no test metric at all, yet
    read as a finished run's. ``limit_val_batches=0`` is Lightning's "no validation" (the last
    weights are tested) and stays, but not with ``patience``: early stopping then failed after
    the first epoch with a traceback (its metric was never logged)."""
    for value in ("0", "0.0"):
        message = "'limit_test_batches' in --set must be > 0 (an int: batches"
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config("mackey-glass", overrides=[f"limit_test_batches={value}"])
    assert load_config("mackey-glass", overrides=["limit_val_batches=0"])["limit_val_batches"] == 0
    with pytest.raises(ConfigError, match="config key 'patience' needs validation"):
        load_config("mackey-glass", overrides=["limit_val_batches=0", "patience=2"])
