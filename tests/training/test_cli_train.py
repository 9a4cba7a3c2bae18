"""The command line: one-line errors, and train/evaluate through main()."""

import functools
import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from tiny_configs import TINY_MACKEY_GLASS, TINY_PSMNIST, sets

from plmu.cli import main
from plmu.training import runner


def _one_line_error(capsys: pytest.CaptureFixture, status: int) -> str:
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("plmu: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_unknown_experiment(capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(capsys, main(["train", "mnist-typo"]))
    assert "unknown experiment 'mnist-typo'" in err and "psmnist" in err


def test_unknown_config_key(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    status = main(["train", "mackey-glass", "--out", str(tmp_path), "--set", "lrr=0.1"])
    err = _one_line_error(capsys, status)
    assert "unknown config key 'lrr'" in err and "did you mean 'lr'" in err
    assert not (tmp_path / "checkpoints").exists()


def test_bad_override_value(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    status = main(["train", "mackey-glass", "--out", str(tmp_path), "--set", "epochs=two"])
    assert "'epochs' in --set expects int" in _one_line_error(capsys, status)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--devices", "0"], "devices=0"),
        (["--set", "max_steps=-5"], "max_steps"),
    ],
)
def test_bad_trainer_option(
    capsys: pytest.CaptureFixture, tmp_path: Path, option: list[str], message: str
) -> None:
    args = ["train", "mackey-glass", "--out", str(tmp_path), *sets(TINY_MACKEY_GLASS)]
    status = main([*args, "--accelerator", "cpu", *option])
    assert message in _one_line_error(capsys, status)


@pytest.mark.parametrize(
    ("option", "package"),
    [
        (["--accelerator", "tpu"], "torch_xla"),
        (["--strategy", "xla"], "torch_xla"),
        (["--set", "precision=transformer-engine"], "transformer_engine"),
    ],
)
def test_trainer_option_needing_a_missing_package(
    capsys: pytest.CaptureFixture, tmp_path: Path, option: list[str], package: str
) -> None:
    """An accelerator, strategy or precision whose package is not installed is a one-line error
    naming the options and the package (it was Lightning's ModuleNotFoundError, a traceback)."""
    try:
        __import__(package)
        pytest.skip(f"{package} is installed")
    except ImportError:
        pass
    args = ["train", "mackey-glass", "--out", str(tmp_path / "run"), *sets(TINY_MACKEY_GLASS)]
    err = _one_line_error(capsys, main([*args, *option]))
    assert package in err and "--accelerator" in err and "precision" in err
    assert not (tmp_path / "run").exists()


def test_bad_model_name(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    args = ["train", "mackey-glass", "--out", str(tmp_path), *sets(TINY_MACKEY_GLASS)]
    status = main([*args, "--set", "model=gru"])
    assert "'model' in --set must be one of" in _one_line_error(capsys, status)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            ["model=lmu", "lmu_init=glorot"],
            "'lmu_init' in --set must be one of ['default', 'psmnist'], got 'glorot'",
        ),
        (
            ["lmu_init=glorot"],
            "'lmu_init' in --set must be one of ['default', 'psmnist'], got 'glorot'",
        ),
        (
            ["model=gru"],
            "'model' in --set must be one of ['lmu', 'lstm', 'parallel-lmu'], got 'gru'",
        ),
    ],
)
def test_bad_psmnist_model_setting_names_the_config_key(
    capsys: pytest.CaptureFixture, tmp_path: Path, setting: list[str], message: str
) -> None:
    """``--set lmu_init=glorot`` failed with LMUCell's "init must be 'default' or 'psmnist'",
    a name the config does not have, and only after the data was read (here: the download
    tried for a missing data directory); now the config key is named before any data is read."""
    args = ["train", "psmnist", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path)]
    err = _one_line_error(capsys, main([*args, *sets([*TINY_PSMNIST, *setting])]))
    assert err == f"plmu: error: config key {message}"
    assert not (tmp_path / "none").exists()


# (experiment, key, bad value, what the key must be): each reached a constructor (a layer, a
# network, a datamodule, TranslationModule), whose error named its own argument, not the config
# key, and mostly only once the data had been read or a download tried; some were taken
# (Mackey-Glass's lmu_order=0 with model=parallel-lmu, dropout=1.0)
_BAD_KEYS = [
    ("psmnist", "order", 0, "must be >= 1"),
    ("psmnist", "lmu_order", 0, "must be >= 1"),
    ("psmnist", "lmu_hidden_size", 0, "must be >= 1"),
    ("psmnist", "lstm_hidden_size", -1, "must be >= 1"),
    ("psmnist", "hidden_size", 0, "must be >= 1"),
    ("psmnist", "num_layers", 0, "must be >= 1"),
    ("psmnist", "memory_size", 0, "must be >= 1"),
    ("psmnist", "theta", 0, "must be > 0"),
    ("psmnist", "dropout", 1.0, "must be < 1"),
    ("psmnist", "dropout", -0.5, "must be >= 0"),
    ("psmnist", "val_size", 0, "must be >= 1"),
    ("psmnist", "lr", 0, "must be > 0"),
    ("psmnist", "weight_decay", -1, "must be >= 0"),
    ("mackey-glass", "lmu_order", 0, "must be >= 1"),
    ("mackey-glass", "lmu_theta", -1, "must be > 0"),
    ("mackey-glass", "lmu_hidden_size", 0, "must be >= 1"),
    ("mackey-glass", "lstm_hidden_size", 0, "must be >= 1"),
    ("mackey-glass", "order", 0, "must be >= 1"),
    ("mackey-glass", "dropout", 1.0, "must be < 1"),
    ("mackey-glass", "horizon", 0, "must be >= 1"),
    ("mackey-glass", "window", 0, "must be >= 1"),
    ("mackey-glass", "stride", 0, "must be >= 1"),
    ("mackey-glass", "warmup", -1, "must be >= 0"),
    ("mackey-glass", "plot_steps", -1, "must be >= 1"),
    ("imdb", "model", "gru", "must be one of ['lmu', 'lstm', 'parallel-lmu']"),
    ("imdb", "embedding_dim", 0, "must be >= 1"),
    ("imdb", "order", 0, "must be >= 1"),
    ("imdb", "theta", 0, "must be > 0"),
    ("imdb", "memory_size", 0, "must be >= 1"),
    ("imdb", "hidden_size", 0, "must be >= 1"),
    ("imdb", "num_layers", 0, "must be >= 1"),
    ("imdb", "dropout", 1.5, "must be < 1"),
    ("imdb", "vocab_size", 2, "must be >= 3"),
    ("imdb", "min_frequency", 0, "must be >= 1"),
    ("imdb", "val_fraction", 0, "must be > 0"),
    ("imdb", "val_fraction", 1.0, "must be < 1"),
    ("imdb", "max_length", 0, "must be >= 1"),
    ("imdb", "truncation_side", "middle", "must be one of ['left', 'right']"),
    ("qqp", "model", "gru", "must be one of ['lmu', 'lstm', 'parallel-lmu']"),
    ("qqp", "mlp_hidden", 0, "must be >= 1"),
    ("snli", "model", "gru", "must be one of ['lmu', 'lstm', 'parallel-lmu']"),
    ("snli", "mlp_hidden", -1, "must be >= 1"),
    ("text8", "d_model", 0, "must be >= 1"),
    ("text8", "num_layers", 0, "must be >= 1"),
    ("text8", "order", 0, "must be >= 1"),
    ("text8", "theta", -1, "must be > 0"),
    ("text8", "memory_size", 0, "must be >= 1"),
    ("text8", "dropout", 1.0, "must be < 1"),
    ("text8", "hidden_activation", "gelu2", "must be one of ["),
    ("text8", "seq_len", 0, "must be >= 1"),
    ("text8", "warmup_steps", -1, "must be >= 0"),
    ("iwslt15-en-vi", "d_model", 0, "must be >= 1"),
    ("iwslt15-en-vi", "order", 0, "must be >= 1"),
    ("iwslt15-en-vi", "theta", 0, "must be > 0"),
    ("iwslt15-en-vi", "memory_size", 0, "must be >= 1"),
    ("iwslt15-en-vi", "encoder_layers", 0, "must be >= 1"),
    ("iwslt15-en-vi", "decoder_layers", 0, "must be >= 1"),
    ("iwslt15-en-vi", "dropout", 1.0, "must be < 1"),
    ("iwslt15-en-vi", "vocab_size", 0, "must be >= 3"),
    ("iwslt15-en-vi", "max_source_length", 0, "must be >= 1"),
    ("iwslt15-en-vi", "max_target_length", 0, "must be >= 1"),
    ("iwslt15-en-vi", "label_smoothing", 1.0, "must be < 1"),
    ("iwslt15-en-vi", "lr_decay", 0, "must be > 0"),
    ("iwslt15-en-vi", "lr_decay", 2, "must be <= 1"),
    ("iwslt15-en-vi", "lr_decay_after", -1, "must be >= 0"),
    ("iwslt15-en-vi", "beam_size", 0, "must be >= 1"),
    ("iwslt15-en-vi", "length_penalty", -1, "must be >= 0"),
    ("iwslt15-en-vi", "max_len_ratio", -1, "must be >= 0"),
    ("iwslt15-en-vi", "max_len_offset", -1, "must be >= 0"),
    ("iwslt15-en-vi", "max_decode_length", 0, "must be >= 1"),
    ("iwslt15-en-vi", "bleu_tokenize", "13b", "must be one of ["),
    # runner keys the datamodules, or Lightning's Trainer, checked after the data was read
    ("psmnist", "batch_size", 0, "must be >= 1"),
    ("psmnist", "num_workers", -1, "must be >= 0"),
    ("psmnist", "log_every_n_steps", 0, "must be >= 1"),
    ("psmnist", "limit_val_batches", -1, "must be >= 0"),
    ("psmnist", "limit_val_batches", 1.5, "must be <= 1.0 as a fraction of the batches"),
    ("psmnist", "limit_test_batches", 2.0, "must be <= 1.0 as a fraction of the batches"),
    ("psmnist", "limit_test_batches", 0, "must be > 0"),
    ("psmnist", "precision", "fp8", "must be one of ['16', '16-mixed'"),
]


@pytest.mark.parametrize(("experiment", "key", "value", "rule"), _BAD_KEYS)
def test_a_bad_model_or_data_setting_names_its_config_key_before_any_data_is_read(
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    experiment: str,
    key: str,
    value: object,
    rule: str,
) -> None:
    """One line naming the config key and its rule, before the data directory is looked at
    (it does not exist: reading it, or downloading into it, would fail otherwise) or the run's
    folder is written."""
    args = ["train", experiment, "--out", str(tmp_path / "run"), "--no-progress-bar"]
    if experiment == "mackey-glass":  # generates its data
        args += sets(TINY_MACKEY_GLASS)
    else:
        args += ["--data-dir", str(tmp_path / "none")]
    err = _one_line_error(capsys, main([*args, "--set", f"{key}={value}"]))
    assert err.startswith(f"plmu: error: config key {key!r} in --set {rule}"), err
    assert not (tmp_path / "none").exists() and not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train_length=40", "'train_length' must be >= 47 (horizon 15 + window 32), got 40"),
        ("val_length=19", "'val_length' must be >= 20 (horizon 15 + warmup 4 + 1), got 19"),
        ("test_length=10", "'test_length' must be >= 20 (horizon 15 + warmup 4 + 1), got 10"),
        ("warmup=32", "'warmup' must lie in [0, window=32), got 32"),
    ],
)
def test_mackey_glass_settings_that_do_not_fit_together_name_the_config_key(
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    message: str,
) -> None:
    """Lengths too short for the horizon and window failed as the data function's argument,
    once setup generated the series; now as the config key, before anything is generated."""
    import plmu.experiments.mackey_glass as mackey_glass

    def generate(*args: object, **kwargs: object) -> None:
        raise AssertionError("the series were generated")

    monkeypatch.setattr(mackey_glass, "forecast_splits", generate)
    args = ["train", "mackey-glass", "--out", str(tmp_path / "run"), "--no-progress-bar"]
    err = _one_line_error(capsys, main([*args, *sets([*TINY_MACKEY_GLASS, setting])]))
    assert err == f"plmu: error: config key {message}"


def test_data_dir_for_mackey_glass_is_refused(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """Mackey-Glass generates its series: a --data-dir was ignored silently; now it is a
    one-line error, before anything is written. A checkpoint that names a data directory (one
    of a plmu that took it) still evaluates."""
    data = tmp_path / "series"
    data.mkdir()
    out = tmp_path / "run"
    args = ["train", "mackey-glass", "--out", str(out), *sets(TINY_MACKEY_GLASS)]
    err = _one_line_error(capsys, main([*args, "--data-dir", str(data), "--accelerator", "cpu"]))
    assert err == (
        f"plmu: error: mackey-glass generates its data and reads none: --data-dir {data} "
        "would be ignored; leave it out"
    )
    assert not out.exists()
    assert main([*args, "--accelerator", "cpu", "--no-progress-bar"]) == 0
    last = out / "checkpoints" / "last.ckpt"
    status = main(["evaluate", str(last), "--data-dir", str(data), "--accelerator", "cpu"])
    assert "--data-dir" in _one_line_error(capsys, status)
    assert not (out / "evaluate").exists()
    checkpoint = torch.load(last, weights_only=False)
    checkpoint["plmu"]["data_dir"] = str(data)
    torch.save(checkpoint, last)
    assert main(["evaluate", str(last), "--accelerator", "cpu", "--no-progress-bar"]) == 0


def test_missing_mnist_offline(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    args = ["train", "psmnist", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path)]
    err = _one_line_error(capsys, main([*args, *sets(TINY_PSMNIST)]))
    assert "could not be downloaded" in err


def test_corrupt_mnist_file(capsys: pytest.CaptureFixture, tmp_path: Path, mnist_dir: Path) -> None:
    (mnist_dir / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    args = ["train", "psmnist", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run")]
    err = _one_line_error(capsys, main([*args, *sets(TINY_PSMNIST), "--no-progress-bar"]))
    assert "train-images-idx3-ubyte.gz" in err


def test_missing_and_corrupt_checkpoint(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    err = _one_line_error(capsys, main(["evaluate", str(tmp_path / "none.ckpt")]))
    assert "does not exist" in err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert "cannot be read" in _one_line_error(capsys, main(["evaluate", str(bad)]))


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(ValueError, match="unknown experiment"):
        main(["--debug", "train", "nope"])


def test_train_and_evaluate_plain_idx(
    capsys: pytest.CaptureFixture, tmp_path: Path, mnist_plain_dir: Path
) -> None:
    out = tmp_path / "run"
    common = ["--accelerator", "cpu", "--devices", "1", "--no-progress-bar"]
    args = ["train", "psmnist", "--data-dir", str(mnist_plain_dir), "--out", str(out)]
    assert main([*args, *sets(TINY_PSMNIST), *common]) == 0
    summary = capsys.readouterr().out
    assert "test_accuracy" in summary and "params" in summary
    assert main(["evaluate", str(out / "checkpoints" / "last.ckpt"), *common]) == 0
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert metrics["experiment"] == "psmnist" and 0.0 <= metrics["test_accuracy"] <= 1.0
    # an --out that is a file: named, before any work (was "[Errno 20] Not a directory: .../logs")
    checkpoint = str(out / "checkpoints" / "last.ckpt")
    status = main(["evaluate", checkpoint, "--out", str(out / "metrics.json"), *common])
    message = _one_line_error(capsys, status)
    assert message.endswith(f"--out {out / 'metrics.json'} is a file, not a directory")
    # the commands for other experiments' checkpoints name the run's experiment
    generate = ["generate", checkpoint, "--prompt", "a"]
    for command in (["predict", checkpoint, "a text"], ["translate", checkpoint, "a text ."]):
        assert "is of the psmnist experiment" in _one_line_error(capsys, main(command))
    assert "is of the psmnist experiment" in _one_line_error(capsys, main(generate))


@pytest.mark.parametrize("inside", [False, True])
def test_an_out_that_is_a_file_is_named(
    capsys: pytest.CaptureFixture, tmp_path: Path, inside: bool
) -> None:
    """Was ``[Errno 17] File exists: 'PATH'`` (``[Errno 20] Not a directory`` inside a file),
    raised only once the data was ready."""
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    out = file / "run" if inside else file
    args = ["train", "mackey-glass", "--out", str(out), *sets(TINY_MACKEY_GLASS)]
    message = _one_line_error(capsys, main([*args, "--accelerator", "cpu"]))
    problem = f"cannot be made: {file} is a file" if inside else "is a file"
    assert message == f"plmu: error: output directory --out {out} {problem}, not a directory"
    assert file.read_text() == "mine\n"


@pytest.mark.parametrize("inside", [False, True])
def test_an_out_that_cannot_be_written_is_named_before_the_data_is_read(
    capsys: pytest.CaptureFixture, tmp_path: Path, read_only_dir: Path, inside: bool
) -> None:
    """Was ``[Errno 13] Permission denied`` (``[Errno 30] Read-only file system`` on a read-only
    mount) naming neither ``--out`` nor the remedy, and only once the data was ready: here the
    data directory is missing, and the ``--out`` error comes first."""
    locked = read_only_dir
    out = locked / "run" if inside else locked
    args = ["train", "psmnist", "--out", str(out), "--data-dir", str(tmp_path / "missing")]
    args += [*sets(TINY_PSMNIST), "--accelerator", "cpu"]
    message = _one_line_error(capsys, main(args))
    assert message == (
        f"plmu: error: output directory --out {out} cannot be written: {locked} is not writable"
    )
    assert list(locked.iterdir()) == [] and not (tmp_path / "missing").exists()


def test_resuming_with_fewer_epochs_than_trained_is_refused_naming_epochs(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """Was Lightning's ``You restored a checkpoint with current_epoch=2, but you have set
    Trainer(max_epochs=1)``, which names no config key, once the data and the loggers were
    ready (a new ``logs/version_1`` left behind)."""
    out = tmp_path / "run"
    args = ["train", "mackey-glass", "--out", str(out), "--accelerator", "cpu"]
    args += [*sets(TINY_MACKEY_GLASS), "--no-progress-bar"]
    assert main([*args, "--set", "epochs=3"]) == 0
    capsys.readouterr()
    message = _one_line_error(capsys, main([*args, "--set", "epochs=1"]))
    assert message.startswith("plmu: error: config key 'epochs' is 1, but ")
    assert "has trained 3 epochs" in message and "--out" in message
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["version_0"]


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_train_refuses_a_strategy_that_trains_in_child_processes(
    capsys: pytest.CaptureFixture, tmp_path: Path, strategy: str
) -> None:
    """``--strategy ddp_spawn`` (or ``ddp_fork``, ``ddp_notebook``) trains in processes started
    from this one, whose loggers and callbacks never come back: the test after the fit failed
    with a traceback (``ValueError: dict contains fields not in fieldnames: 'val_loss', ...``
    from the CSV log, whose rows it had truncated). Refused before any data is read."""
    out = tmp_path / "run"
    args = ["train", "mackey-glass", "--out", str(out), *sets(TINY_MACKEY_GLASS)]
    args += ["--accelerator", "cpu", "--devices", "1", "--strategy", strategy]
    message = _one_line_error(capsys, main([*args, "--no-progress-bar"]))
    assert message.startswith(f"plmu: error: --strategy {strategy} is not supported by plmu train")
    assert "--strategy ddp" in message and not out.exists()


def test_resuming_with_a_changed_task_is_refused(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """``--set horizon=5 window=64`` on a resumed Mackey-Glass run trained the rest of it on
    another task; now one line names both keys, and the run's files stay as they were."""
    out = tmp_path / "run"
    args = ["train", "mackey-glass", "--out", str(out), *sets(TINY_MACKEY_GLASS)]
    args += ["--accelerator", "cpu", "--devices", "1", "--no-progress-bar"]
    assert main(args) == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    status = main([*args, *sets(["epochs=2", "window=64", "horizon=5"])])
    message = _one_line_error(capsys, status)
    assert "cannot change 'horizon' (15 -> 5), 'window' (32 -> 64) when resuming" in message
    assert message.endswith("train into another --out instead")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_resuming_is_announced_only_once_the_run_resumes(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """``plmu: resuming from OUT/checkpoints/last.ckpt`` was printed before the config was
    checked, so a command that a bad ``--set`` stopped said it resumed; now it is printed once
    the config is valid for the checkpoint, and only then."""
    out = tmp_path / "run"
    args = ["train", "mackey-glass", "--out", str(out), *sets(TINY_MACKEY_GLASS)]
    args += ["--accelerator", "cpu", "--devices", "1", "--no-progress-bar"]
    assert main(args) == 0
    assert "plmu: resuming" not in capsys.readouterr().out
    last = out / "checkpoints" / "last.ckpt"
    for bad in (["lrr=0.1"], ["epochs=two"], ["horizon=5"]):
        status = main([*args, *sets(bad)])
        assert "plmu: resuming" not in capsys.readouterr().out, bad
        assert status == 2
    assert main([*args, *sets(["epochs=2"])]) == 0
    assert capsys.readouterr().out.count(f"plmu: resuming from {last}") == 1


def test_train_help_lists_experiments(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "experiments:" in out and "mackey-glass" in out and "psmnist" in out


def test_missing_config_file(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    args = ["train", "mackey-glass", "--config", str(tmp_path / "none.yaml")]
    assert "cannot read config file" in _one_line_error(capsys, main(args))


def test_plmu_turns_on_huge_pages_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "")  # recorded, so the test leaves it as found
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    main(["train", "no-such-experiment"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    main(["train", "no-such-experiment"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


class _SendSigterm(L.Callback):
    """Sends this process SIGTERM (as `kill` or a cluster's scheduler does) as the second batch
    starts."""

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("own_handler", [False, True])
def test_sigterm_is_a_failure(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_handler
) -> None:
    """SIGTERM stops the run after the current step with last.ckpt written there, and plmu exits
    143 (128 + 15) with a message. Where the process has its own SIGTERM handler plmu leaves it
    and Lightning's to act: Lightning stops on SIGTERM with a SystemExit of status 0, and a
    killed run must not succeed all the same."""
    sending = functools.partial(runner.train, callbacks=[_SendSigterm()])
    monkeypatch.setattr(runner, "train", sending)
    calls = []
    previous = signal.signal(
        signal.SIGTERM, (lambda *args: calls.append(args)) if own_handler else signal.SIG_DFL
    )
    args = ["train", "mackey-glass", "--out", str(tmp_path), *sets(TINY_MACKEY_GLASS)]
    try:
        assert main([*args, "--accelerator", "cpu", "--no-progress-bar"]) == 143
    finally:
        handler = signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert "plmu: terminated by SIGTERM" in err
    assert not (tmp_path / "metrics.json").exists()
    last = tmp_path / "checkpoints" / "last.ckpt"
    if own_handler:  # Lightning's stop, after the batch: no checkpoint yet
        assert len(calls) == 1 and not last.exists()
    else:  # after the second batch's step, the handler as before the run
        assert "plmu: SIGTERM: stopping after this step" in err
        assert torch.load(last, weights_only=False)["global_step"] == 2
        assert handler is signal.SIG_DFL


class _PressCtrlC(L.Callback):
    """A Ctrl-C (KeyboardInterrupt) in the first epoch; Lightning turns it into exit(1)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_during_training_is_an_interruption(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after the first
    pressing = functools.partial(runner.train, callbacks=[_PressCtrlC()])
    monkeypatch.setattr(runner, "train", pressing)
    args = ["train", "mackey-glass", "--out", str(tmp_path), *sets(TINY_MACKEY_GLASS)]
    try:
        assert main([*args, "--accelerator", "cpu", "--no-progress-bar"]) == 130
    finally:
        signal.signal(signal.SIGINT, handler)
    assert "plmu: interrupted" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_a_folder_given_as_checkpoint_says_which_file_to_give(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = _one_line_error(capsys, main(["evaluate", str(tmp_path)]))
    assert "is a folder" in message and "best.ckpt" in message
    # the checkpoints/ folder itself: the file inside it, not checkpoints/checkpoints/best.ckpt
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    message = _one_line_error(capsys, main(["evaluate", str(folder)]))
    assert message.endswith(f"e.g. {folder / 'best.ckpt'}")
    message = _one_line_error(capsys, main(["evaluate", str(folder.parent)]))
    assert message.endswith(f"e.g. {folder / 'best.ckpt'}")
    # "." inside checkpoints/ (was: e.g. checkpoints/best.ckpt, a file in a folder not there)
    monkeypatch.chdir(folder)
    assert _one_line_error(capsys, main(["evaluate", "."])).endswith("e.g. best.ckpt")


# options whose value has no default to state: nothing is read or written without them
_NO_DEFAULT = {("train", "--config"), ("train", "--set"), ("bench", "--json"), ("bench", "--plot")}


def test_every_option_help_states_its_default() -> None:
    """``plmu generate --help`` did not say that ``--length`` defaults to 500, nor train's that
    ``--devices`` and ``--strategy`` default to auto or ``--num-nodes`` to 1: every option that
    takes a value (and is not required) now says what it is without one."""
    import argparse

    from plmu.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    silent = []
    for command, sub in subparsers.choices.items():
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue  # positionals, flags (--quick, --greedy, --help), --prompt
            name = max(action.option_strings, key=len)
            if (command, name) in _NO_DEFAULT:
                continue
            if "default" not in (action.help or ""):
                silent.append((command, name))
            elif action.default not in (None, []) and not isinstance(action.default, list):
                assert str(action.default) in action.help, (command, name, action.help)
    assert not silent
