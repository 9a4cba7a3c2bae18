"""`plmu train text8`, `plmu evaluate`, `plmu generate` end to end on a tiny fixture."""

import json
import math
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import assert_same_last_checkpoint, crash_at_step, loader_position
from plmu import cli
from plmu.data.text8 import ALPHABET
from plmu.experiments import text8 as experiment
from plmu.generation import generate_from_checkpoint, iter_tokens
from plmu.models.language_model import LMULanguageModel
from plmu.training import registry
from plmu.training.config import load_config
from plmu.training.runner import evaluate, load_checkpoint, train

FIXTURE = Path(__file__).parent / "fixtures" / "text8" / "text8"
TINY = [
    "d_model=16",
    "num_layers=2",
    "order=8",
    "theta=32",
    "memory_size=2",
    "seq_len=32",
    "eval_context=8",
    "batch_size=8",
    "epochs=2",
    "warmup_steps=2",
    "num_workers=0",
    "sample_length=300",
    "lr=0.01",
]
DEVICE = {"accelerator": "cpu", "devices": 1, "progress_bar": False}


@pytest.fixture(scope="module")
def zip_dir(tmp_path_factory) -> Path:
    """A data directory holding only text8.zip (the original archive's format)."""
    path = tmp_path_factory.mktemp("text8zip")
    with zipfile.ZipFile(path / "text8.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(FIXTURE, "text8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, zip_dir):
    """A tiny run trained once for the module: ``(out, metrics)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    try:
        metrics = train("text8", out=out, overrides=TINY, data_dir=zip_dir, **DEVICE)
    finally:
        torch.set_num_threads(threads)
    return out, metrics


def test_registered_with_a_complete_config():
    exp = registry.get("text8")
    assert exp is experiment.EXPERIMENT and exp.finish is not None
    config = load_config("text8")
    net = experiment.build_net(config)
    params = sum(p.numel() for p in net.parameters())
    assert 1_500_000 < params < 3_000_000  # the documented ~2.2M
    assert config["theta"] == config["seq_len"]


def test_train_writes_metrics_sample_and_checkpoints(trained):
    out, metrics = trained
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    # two epochs of a 2.5k-character text: better than uniform (log2 27 = 4.75 bits)
    assert 1.0 < saved["test_bpc"] < math.log2(27)
    assert saved["test_loss"] == pytest.approx(saved["test_bpc"] * math.log(2), rel=1e-5)
    assert saved["train_chars_per_second"] > 0 and saved["generate_chars_per_second"] > 0
    assert saved["epochs"] == 2
    # text8's config has no model key (one network, of parallel LMU layers): it was null
    assert saved["model"] == "parallel-lmu"
    sample = (out / "sample.txt").read_text()
    assert sample.startswith("the ") and len(sample) == 4 + 300 + 1
    assert set(sample.rstrip("\n")) <= set(ALPHABET)
    assert (out / "checkpoints" / "best.ckpt").is_file()


def test_evaluate_reproduces_test_bpc_from_plain_file(trained, tmp_path):
    out, metrics = trained
    shutil.copy(FIXTURE, tmp_path / "text8")  # the unzipped format gives the same numbers
    again = evaluate(
        out / "checkpoints" / "best.ckpt", data_dir=tmp_path, out=tmp_path / "eval", **DEVICE
    )
    assert again["test_bpc"] == pytest.approx(metrics["test_bpc"], rel=1e-5)
    assert "train_chars_per_second" not in again and again["generate_chars_per_second"] > 0
    assert again["model"] == "parallel-lmu"


def test_checkpoint_rebuilds_without_data(trained):
    out, _ = trained
    exp, _config, module, datamodule = load_checkpoint(out / "checkpoints" / "best.ckpt")
    assert exp.name == "text8" and isinstance(module.net, LMULanguageModel)
    with pytest.raises(ValueError, match="--data-dir"):
        datamodule.setup("test")


def test_trained_model_step_form_equals_parallel_scoring(trained):
    """float32, trained weights: each greedy step-form token is the parallel argmax (or a tie
    within float32 rounding)."""
    out, _ = trained
    _, _, module, _ = load_checkpoint(out / "checkpoints" / "best.ckpt")
    net = module.net
    prompt = torch.tensor([ALPHABET.index(c) for c in "the river "])
    generated = torch.tensor(list(iter_tokens(net, prompt, 400, greedy=True)))
    with torch.no_grad():
        logits, _ = net(torch.cat([prompt, generated])[None, :-1])
    logits = logits[0, len(prompt) - 1 :]
    parallel = logits.argmax(-1)
    differ = parallel != generated
    gap = logits.gather(1, parallel[:, None]) - logits.gather(1, generated[:, None])
    assert (gap[differ] < 1e-4).all()
    assert differ.float().mean() < 0.01


def test_generate_command(trained, capsys):
    out, _ = trained
    checkpoint = out / "checkpoints" / "best.ckpt"
    status = cli.main(
        ["generate", str(checkpoint), "--prompt", "The ", "--length", "50", "--greedy"]
    )
    assert status == 0
    printed = capsys.readouterr().out.rstrip("\n")
    assert printed.startswith("the ") and len(printed) == 54
    assert printed[4:] == generate_from_checkpoint(checkpoint, "the ", 50, greedy=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "", "--length", "5"], "prompt must contain at least one character"),
        (["--prompt", "hi!", "--length", "5"], "outside the text8 alphabet"),
        (["--prompt", "hi", "--length", "0"], "length must be >= 1"),
        (["--prompt", "hi", "--temperature", "-1"], "temperature"),
        (["--prompt", "hi", "--seed", str(2**80)], "seed must lie in [-2**63, 2**64)"),
    ],
)
def test_generate_command_bad_input(trained, capsys, args, message):
    out, _ = trained
    status = cli.main(["generate", str(out / "checkpoints" / "best.ckpt"), *args])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1


def test_generate_command_missing_checkpoint(tmp_path, capsys):
    status = cli.main(["generate", str(tmp_path / "nope.ckpt"), "--prompt", "a"])
    assert status == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("temperature", ["0.5", "1.0"])
def test_generate_greedy_with_temperature_refused(tmp_path, capsys, temperature):
    # --greedy ignored the temperature silently; the default's value given explicitly counts too
    checkpoint = str(tmp_path / "nope.ckpt")
    args = ["generate", checkpoint, "--prompt", "a", "--greedy", "--temperature", temperature]
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--greedy" in err and "--temperature" in err
    # either one alone passes the parser (and reaches the checkpoint)
    for flag in (["--greedy"], ["--temperature", temperature]):
        assert cli.main(["generate", checkpoint, "--prompt", "a", *flag]) == 2
        assert "does not exist" in capsys.readouterr().err
    # greedy decoding draws nothing: a --seed with it would be ignored too
    assert cli.main(["generate", checkpoint, "--prompt", "a", "--greedy", "--seed", "1"]) == 2
    assert "--seed has no effect with --greedy" in capsys.readouterr().err
    assert cli.main(["generate", checkpoint, "--prompt", "a", "--seed", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_offline_without_data_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    status = cli.main(
        ["train", "text8", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("plmu: error: text8 not found") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("sample_prompt=Hello, world", "config key 'sample_prompt' has characters outside"),
        ("sample_prompt=''", "config key 'sample_prompt' must contain at least one character"),
        ("sample_length=0", "config key 'sample_length' must be >= 1"),
        ("sample_temperature=0", "config key 'sample_temperature' must be a finite number > 0"),
    ],
)
def test_bad_sample_settings_fail_before_training(tmp_path, capsys, setting, message):
    """The sample is generated after training and testing: a bad sample setting used to fail
    only then, leaving no metrics.json. It is refused before any data is read."""
    out = tmp_path / "run"
    args = ["--data-dir", str(tmp_path / "no-data"), "--out", str(out), "--set", setting]
    status = cli.main(["train", "text8", *args, "--accelerator", "cpu", "--no-progress-bar"])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("setting", ["eval_context=32", "eval_context=40", "eval_context=-1"])
def test_eval_context_must_be_shorter_than_seq_len(zip_dir, tmp_path, capsys, setting):
    """``eval_context >= seq_len`` was cut to ``seq_len - 1`` without a word: fewer characters
    of history than the config promised, and one evaluation window per scored character
    (``seq_len`` times the work); a negative one failed only after the data was read."""
    out = tmp_path / "run"
    args = ["--data-dir", str(zip_dir), "--out", str(out), "--accelerator", "cpu"]
    args += [arg for option in [*TINY, setting] for arg in ("--set", option)]
    status = cli.main(["train", "text8", *args, "--no-progress-bar"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "config key 'eval_context' must lie in [0, seq_len) = [0, 32)" in err
    assert not out.exists()


def test_run_interrupted_mid_epoch_resumes_exactly(zip_dir, tmp_path):
    """text8's configure_optimizers asks for trainer.estimated_stepping_batches (its LR
    schedule), which makes Lightning set the loader up before it reads the checkpoint; the
    loader gets its position all the same (Lightning issue #20550, see RunInfo)."""
    options = [*TINY, "checkpoint_every_n_steps=3"]  # 10 steps per epoch, dropout 0.1
    reference = train("text8", out=tmp_path / "ref", overrides=options, data_dir=zip_dir, **DEVICE)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            "text8",
            out=tmp_path / "run",
            overrides=options,
            data_dir=zip_dir,
            callbacks=[crash_at_step(13)],
            **DEVICE,
        )
    assert loader_position(tmp_path / "run") == [{"epoch": 1, "batches": 2}]  # after step 12
    resumed = train("text8", out=tmp_path / "run", overrides=options, data_dir=zip_dir, **DEVICE)
    assert_same_last_checkpoint(tmp_path / "ref", tmp_path / "run")
    assert resumed["test_bpc"] == reference["test_bpc"]


def test_sample_file_holds_the_prompt_as_generated_from(tmp_path):
    """``sample.txt`` starts with the prompt lower-cased, as it was generated from (and as
    ``plmu generate`` prints it), not as the config spells it."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    net = LMULanguageModel(27, 8, 1, 4, 8.0)
    settings = {"sample_prompt": "The ", "sample_length": 5, "sample_temperature": 1.0, "seed": 0}
    module = SimpleNamespace(net=net, sample_settings=settings, train_seconds=0.0)
    experiment.finish(module, None, tmp_path)
    assert (tmp_path / "sample.txt").read_text().startswith("the ")
