"""imdb, qqp, snli end to end on fixture files: train a few steps, evaluate, predict (CLI too)."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from conftest import assert_same_last_checkpoint, crash_at_step, loader_position
from plmu.cli import main
from plmu.data.text_tasks import TASKS
from plmu.predict import predict, predict_loaded
from plmu.training.runner import evaluate, load_checkpoint, train
from text_fixtures import (
    pair_rows,
    qqp_lines,
    sentiment_rows,
    snli_line,
    write_aclimdb,
    write_glue_qqp,
    write_rows,
    write_snli,
)

# a tiny network and a few steps: fast, and enough to check every piece fits
TINY = [
    "epochs=2",
    "batch_size=4",
    "max_length=12",
    "vocab_size=60",
    "min_frequency=1",
    "embedding_dim=8",
    "hidden_size=8",
    "memory_size=2",
    "order=4",
    "theta=12",
    "num_layers=2",
    "log_every_n_steps=1",
]


def _write_task(tmp_path, task: str, fmt: str):
    spec = TASKS[task]
    data = tmp_path / "data"
    if spec.is_pair:
        names = list(spec.label_names) if fmt == ".csv" else None  # names in csv, ints elsewhere
        write_rows(data / f"train{fmt}", pair_rows(24, spec.columns, spec.num_classes, names))
        write_rows(data / f"test{fmt}", pair_rows(6, spec.columns, spec.num_classes, names))
    else:
        write_rows(data / f"train{fmt}", sentiment_rows(24, labels_as_names=fmt == ".csv"))
        write_rows(data / f"validation{fmt}", sentiment_rows(4))
        write_rows(data / f"test{fmt}", sentiment_rows(6))
    return data


@pytest.mark.parametrize(
    ("task", "fmt", "example", "model"),
    [
        ("imdb", ".jsonl", ["a great film"], "parallel-lmu"),
        ("imdb", ".csv", ["boring and awful"], "parallel-lmu"),
        ("imdb", ".parquet", ["i hated it"], "lstm"),
        ("qqp", ".parquet", ["what is the colour of sky 1", "how do fish swim"], "parallel-lmu"),
        ("snli", ".csv", ["what is the colour of sky 2", "no birds fly here"], "parallel-lmu"),
    ],
)
def test_train_evaluate_predict(tmp_path, capsys, task, fmt, example, model):
    data = _write_task(tmp_path, task, fmt)
    out = tmp_path / "run"
    overrides = [*TINY, f"model={model}"]
    metrics = train(task, out=out, overrides=overrides, data_dir=data, progress_bar=False)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == pytest.approx(
        metrics["test_accuracy"]
    )
    checkpoint = metrics["best_checkpoint"]  # the one train tested

    again = evaluate(checkpoint, data_dir=data, out=tmp_path / "eval", progress_bar=False)
    assert again["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert again["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)

    prediction = predict(checkpoint, *example)
    names = TASKS[task].label_names
    assert prediction.label in names
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.probability == max(prediction.probabilities.values())

    capsys.readouterr()
    assert main(["predict", str(checkpoint), *example]) == 0
    label, probability = capsys.readouterr().out.split()
    assert label == prediction.label and float(probability) == pytest.approx(
        prediction.probability, abs=1e-4
    )


def _write_original(tmp_path, task: str):
    """``tmp_path/data`` holding ``task``'s original distribution (learnable fixture rows)."""
    data = tmp_path / "data"
    if task == "imdb":
        write_aclimdb(data / "aclImdb", {"train": sentiment_rows(24), "test": sentiment_rows(6)})
    elif task == "qqp":
        columns = TASKS["qqp"].columns
        train = [*qqp_lines(pair_rows(24, columns, 2)), "broken\tline"]
        write_glue_qqp(data / "QQP", train, qqp_lines(pair_rows(6, columns, 2)))
    else:
        names = TASKS["snli"].label_names

        def lines(n: int) -> list[str]:
            rows = pair_rows(n, TASKS["snli"].columns, 3, names)
            return [snli_line(r["premise"], r["hypothesis"], r["label"]) for r in rows]

        write_snli(data / "snli_1.0", {"train": lines(24), "dev": lines(6), "test": lines(6)})
    return data


@pytest.mark.parametrize(
    ("task", "example"),
    [
        ("imdb", ["a great<br />film"]),
        ("qqp", ["what is the colour of sky 1", "how do fish swim"]),
        ("snli", ["what is the colour of sky 2", "no birds fly here"]),
    ],
)
def test_cli_trains_on_the_original_distribution(tmp_path, capsys, task, example):
    data = _write_original(tmp_path, task)
    out = tmp_path / "run"
    overrides = [arg for key in TINY for arg in ("--set", key)]
    command = ["train", task, "--data-dir", str(data), "--out", str(out), *overrides]
    assert main([*command, "--set", "epochs=1", "--accelerator", "cpu"]) == 0
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["test_accuracy"] <= 1.0
    capsys.readouterr()
    assert main(["predict", str(out / "checkpoints" / "last.ckpt"), *example]) == 0
    assert capsys.readouterr().out.split()[0] in TASKS[task].label_names


def test_prediction_alone_equals_prediction_in_a_padded_batch(tmp_path):
    data = _write_task(tmp_path, "imdb", ".jsonl")
    out = tmp_path / "run"
    train("imdb", out=out, overrides=TINY, data_dir=data, progress_bar=False)
    _, _, module, datamodule = load_checkpoint(out / "checkpoints" / "last.ckpt")
    texts = ["i loved it", "a great film number 3 but boring and awful", "dull", "superb fun !"]
    alone = [predict_loaded(module, datamodule, t).probabilities for t in texts]
    encoded = [datamodule.encode(t) for t in texts]
    width = max(ids.shape[1] for ids, _ in encoded)
    ids = torch.zeros(len(texts), width, dtype=torch.long)
    for i, (row, _) in enumerate(encoded):
        ids[i, : row.shape[1]] = row[0]
    lengths = torch.cat([n for _, n in encoded])
    with torch.no_grad():
        batched = torch.softmax(module(ids, lengths), dim=-1)
    for i, probabilities in enumerate(alone):
        torch.testing.assert_close(
            batched[i], torch.tensor(list(probabilities.values())), rtol=1e-5, atol=1e-6
        )


def test_predict_errors_are_one_line(tmp_path, capsys):
    data = _write_task(tmp_path, "qqp", ".jsonl")
    out = tmp_path / "run"
    train("qqp", out=out, overrides=TINY, data_dir=data, progress_bar=False)
    checkpoint = str(out / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    cases = [
        (["only one question"], "qqp expects 2 text(s) (question1, question2), got 1"),
        (["", "how do fish swim"], "question1 is empty"),
        (["sky " * 13, "how do fish swim"], "question1 has 13 tokens, more than max_length=12"),
        # a byte that is not UTF-8 in argv (a Latin-1 terminal): was the tokenizer's
        # "TextEncodeInput must be Union[TextInputSequence, ...]", naming no argument
        (["sky", "caf\udce9 ?"], "question2 holds the byte 0xe9 (character 4), not UTF-8 text"),
    ]
    for texts, message in cases:
        assert main(["predict", checkpoint, *texts]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def test_train_without_data_offline_says_what_to_put_where(tmp_path, capsys):
    assert main(["train", "imdb", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "has no train file: put train.jsonl, train.csv or train.parquet there" in err


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_failed_evaluate_leaves_nothing_behind(tmp_path, capsys):
    """evaluate made its CSVLogger's OUT/logs/version_N before reading the data (imdb reads it
    in setup): a --data-dir without the data left an empty folder per try. The data is now
    read first; what OUT held before the call stays."""
    data = _write_task(tmp_path, "imdb", ".jsonl")
    run = tmp_path / "run"
    train("imdb", out=run, overrides=TINY, data_dir=data, progress_bar=False)
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    empty = tmp_path / "empty"
    empty.mkdir()
    before = _tree(run)
    capsys.readouterr()
    for out in ([], ["--out", str(tmp_path / "eval" / "new")]):
        assert main(["evaluate", checkpoint, "--data-dir", str(empty), *out]) == 2
        assert "has no test file" in capsys.readouterr().err
    assert _tree(run) == before and not (tmp_path / "eval").exists()
    # an OUT holding an earlier evaluation: it stays, and no version_1 appears beside it
    evaluate(checkpoint, progress_bar=False)
    before = _tree(run)
    assert "evaluate/logs/version_0/metrics.csv" in before
    assert main(["evaluate", checkpoint, "--data-dir", str(empty)]) == 2
    assert _tree(run) == before


def test_evaluate_needs_only_the_test_file(tmp_path):
    """The vocabulary travels in the checkpoint: ``plmu evaluate --data-dir`` with the test file
    alone tests as the training run did (it read every split and said "has no train file")."""
    data = _write_task(tmp_path, "imdb", ".jsonl")
    metrics = train("imdb", out=tmp_path / "run", overrides=TINY, data_dir=data, progress_bar=False)
    alone = tmp_path / "test-only"
    alone.mkdir()
    (alone / "test.jsonl").write_bytes((data / "test.jsonl").read_bytes())
    evaluated = evaluate(
        metrics["best_checkpoint"], data_dir=alone, out=tmp_path / "eval", progress_bar=False
    )
    assert evaluated["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    assert evaluated["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_predict_refuses_a_checkpoint_that_is_not_a_text_classifier():
    import lightning as L

    with pytest.raises(ValueError, match="needs a text classification checkpoint"):
        predict_loaded(torch.nn.Linear(1, 1), L.LightningDataModule(), "some text")


@pytest.mark.parametrize(("num_workers", "written_before"), [(0, False), (1, False), (0, True)])
def test_resumed_run_trains_as_the_uninterrupted_one(tmp_path, num_workers, written_before):
    """Stopped after epoch 1 and resumed: the shuffles of epochs 2 and 3 (seed + epoch) and so
    the weights are those of one run of 3 epochs. (With a worker process the resumed run once
    read epoch 0's order: the worker drew indices before Lightning's set_epoch.)
    ``written_before``: the checkpoint also holds the vocabulary in Lightning's datamodule
    state, as checkpoints written before did."""
    data = _write_task(tmp_path, "imdb", ".jsonl")
    overrides = [o for o in TINY if not o.startswith("epochs=")] + [f"num_workers={num_workers}"]
    for out, epochs in (("ref", 3), ("run", 1), ("run", 3)):
        last = tmp_path / out / "checkpoints" / "last.ckpt"
        if written_before and last.is_file():
            checkpoint = torch.load(last, weights_only=False)
            checkpoint["TextClassificationData"] = dict(checkpoint["plmu"]["saved"])
            torch.save(checkpoint, last)
        options = [*overrides, f"epochs={epochs}"]
        train("imdb", out=tmp_path / out, overrides=options, data_dir=data, progress_bar=False)
    assert_same_last_checkpoint(tmp_path / "ref", tmp_path / "run")


def test_run_interrupted_mid_epoch_resumes_exactly(tmp_path):
    """imdb killed inside epoch 1 (6 batches an epoch, last.ckpt every 2 steps, dropout 0.3)
    and resumed: the rest of that epoch's shuffle, then epoch 2, give the uninterrupted run's
    weights."""
    data = _write_task(tmp_path, "imdb", ".jsonl")
    options = [o for o in TINY if not o.startswith("epochs=")]
    options += ["epochs=3", "checkpoint_every_n_steps=2"]
    run = functools.partial(train, "imdb", overrides=options, data_dir=data, progress_bar=False)
    reference = run(out=tmp_path / "ref")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(out=tmp_path / "run", callbacks=[crash_at_step(9)])
    assert loader_position(tmp_path / "run") == [{"epoch": 1, "batches": 2}]  # after step 8
    resumed = run(out=tmp_path / "run")
    assert resumed["global_step"] == reference["global_step"] == 18
    assert_same_last_checkpoint(tmp_path / "ref", tmp_path / "run")
    assert resumed["test_accuracy"] == reference["test_accuracy"]


@pytest.mark.parametrize("written_before", [False, True])
def test_resumed_run_keeps_the_vocabulary_its_weights_were_trained_with(
    tmp_path, monkeypatch, written_before
):
    """The resumed process builds the vocabulary again; when that one differs (another release
    of plmu or tokenizers normalises text differently, as when the HTML tag pattern changed,
    or the training files changed), the run goes on with the checkpoint's vocabulary, not with
    word ids its embedding never learnt. The vocabulary is stored once, in
    ``checkpoint["plmu"]["saved"]`` (Lightning's datamodule state held it a second time);
    ``written_before``: a checkpoint that holds both copies, as they did."""
    import plmu.data.text_classification as tc
    from plmu.data.text_splits import load_splits

    rows = [{**r, "text": f"{r['text']} <3 so good<br />"} for r in sentiment_rows(24)]
    data = tmp_path / "data"
    write_rows(data / "train.jsonl", rows)
    write_rows(data / "test.jsonl", rows[:6])
    options = [o for o in TINY if not o.startswith(("epochs=", "vocab_size="))]
    options += ["vocab_size=12"]
    monkeypatch.setattr(tc, "HTML_TAG", r"<[^>]*>")  # the older pattern: "<3 so good<br />" goes
    train("imdb", out=tmp_path / "run", overrides=[*options, "epochs=1"], data_dir=data,
          progress_bar=False)  # fmt: skip
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)
    first = checkpoint["plmu"]
    assert "TextClassificationData" not in checkpoint  # stored once
    if written_before:
        checkpoint["TextClassificationData"] = dict(first["saved"])
        torch.save(checkpoint, tmp_path / "run/checkpoints/last.ckpt")
    monkeypatch.undo()  # the resumed process keeps "so good": its own vocabulary differs
    rebuilt = tc.build_tokenizer(tc._column_texts(load_splits(
        TASKS["imdb"], data, 0.1, 0)["train"]), 12, 1)  # fmt: skip
    assert rebuilt.to_str() != first["saved"]["tokenizer"]
    train("imdb", out=tmp_path / "run", overrides=[*options, "epochs=2"], data_dir=data,
          progress_bar=False)  # fmt: skip
    last = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)
    assert last["epoch"] == 1 and last["plmu"]["saved"] == first["saved"]
    assert "TextClassificationData" not in last
