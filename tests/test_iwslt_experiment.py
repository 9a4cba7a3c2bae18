"""iwslt15-en-vi end to end on a tiny fixture: train, test (BLEU), evaluate, translate."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from tokenizers import Tokenizer

from _iwslt_fixture import write_iwslt
from conftest import assert_same_last_checkpoint, crash_at_step, loader_position
from plmu import cli
from plmu.data.iwslt import IWSLTDataModule, read_data_dir
from plmu.training import registry
from plmu.training.config import load_config
from plmu.training.runner import load_checkpoint, train
from plmu.training.translation import (
    TranslationModule,
    corpus_bleu,
    decode_max_lengths,
    lr_factor,
)
from plmu.translate import translate, translate_sentence

TINY = [
    "epochs=1",
    "batch_size=8",
    "vocab_size=80",
    "d_model=16",
    "order=4",
    "theta=4.0",
    "memory_size=1",
    "encoder_layers=1",
    "decoder_layers=1",
    "beam_size=2",
    "max_decode_length=20",
    "log_every_n_steps=1",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny training run shared by the tests below: (out dir, data dir, metrics)."""
    root = tmp_path_factory.mktemp("iwslt")
    data = write_iwslt(root / "data", n_train=48, n_eval=6, extra_train=2)
    out = root / "run"
    metrics = train(
        "iwslt15-en-vi",
        out=out,
        overrides=TINY,
        data_dir=data,
        accelerator="cpu",
        devices=1,
        progress_bar=False,
    )
    return out, data, metrics


def test_registered_with_a_complete_config():
    exp = registry.get("iwslt15-en-vi")
    assert exp.finish is not None
    config = load_config("iwslt15-en-vi")
    assert config["beam_size"] >= 1 and config["hf_dataset"] == "IWSLT/mt_eng_vietnamese"


def test_train_writes_bleu_throughput_and_translations(run):
    out, _, metrics = run
    written = json.loads((out / "metrics.json").read_text())
    assert written["test_bleu"] == metrics["test_bleu"]
    assert written["experiment"] == "iwslt15-en-vi"
    assert written["model"] == "parallel-lmu"  # no model key in its config: it was null
    assert 0.0 <= written["test_bleu"] <= 100.0
    assert written["test_loss"] > 0
    assert written["train_tokens_per_s"] > 0 and written["decode_tokens_per_s"] > 0
    assert written["test_beam_size"] == 2 and written["dropped_train_pairs"] == 2
    assert written["epochs"] == 1
    lines = (out / "tst2013.hyp.vi").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6


def test_checkpoint_rebuilds_without_data_and_translates(run):
    out, _, _ = run
    ckpt = out / "checkpoints" / "last.ckpt"
    exp, _, module, dm = load_checkpoint(ckpt)
    assert exp.name == "iwslt15-en-vi" and dm._raw is None  # no data read
    text = translate_sentence(module, dm, "we like a small cat .", beam=1)
    assert isinstance(text, str)
    assert translate(ckpt, "we like a small cat .", beam=1) == text
    # beam 1 is greedy; a wider beam also gives a string
    assert isinstance(translate(ckpt, "we like a small cat .", beam=3), str)


def test_trained_model_step_decoding_matches_parallel_scoring(run):
    """With trained weights: greedy step-form tokens are the parallel (teacher-forced) arg-max."""
    out, data, _ = run
    _, _, module, dm = load_checkpoint(out / "checkpoints" / "last.ckpt", data_dir=data)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    net = module.net
    hyps = net.greedy(batch.src, batch.src_lengths, max_len=20)
    for i, hyp in enumerate(hyps):
        n = int(batch.src_lengths[i])
        with torch.no_grad():
            logits = net(
                batch.src[i : i + 1, :n], batch.src_lengths[i : i + 1], torch.tensor([[2, *hyp]])
            )
        logits[..., [0, 2]] = float("-inf")  # never generated: <pad>, <s>
        predicted = logits.argmax(-1)[0].tolist()
        assert predicted[: len(hyp)] == hyp
        assert len(hyp) == 20 or predicted[len(hyp)] == 3  # stopped at </s>


def test_translate_bad_input(run):
    out, _, _ = run
    ckpt = out / "checkpoints" / "last.ckpt"
    _, _, module, dm = load_checkpoint(ckpt)
    with pytest.raises(ValueError, match="sentence is empty"):
        translate_sentence(module, dm, "  ")
    with pytest.raises(ValueError, match="max_source_length=150"):
        translate_sentence(module, dm, " ".join(["house"] * 200))
    with pytest.raises(ValueError, match="beam must be >= 1"):
        translate_sentence(module, dm, "i see a dog .", beam=0)


def test_cli_translate_and_errors(run, capsys):
    out, _, _ = run
    ckpt = str(out / "checkpoints" / "last.ckpt")
    assert cli.main(["translate", ckpt, "i have a big book today .", "--beam", "1"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == translate(ckpt, "i have a big book today .", beam=1)
    assert cli.main(["translate", ckpt, ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plmu: error: sentence is empty") and "\n" not in err
    assert cli.main(["translate", ckpt, "i see a caf\udce9 ."]) == 2  # argv not UTF-8
    err = capsys.readouterr().err.strip()
    assert "sentence holds the byte 0xe9 (character 12), not UTF-8 text" in err and "\n" not in err


def test_translate_help_says_the_sentence_must_be_moses_tokenised(capsys):
    """IWSLT'15 is distributed Moses-tokenised (punctuation split off, ' and " written as
    &apos; and &quot;) and the BPE is trained on it as it is: untokenised, an apostrophe or a
    quote is <unk>. The help says how to write the sentence, and that the output is alike."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["translate", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Moses-tokenised" in text and "&apos;" in text and "&quot;" in text
    assert "I &apos;d like" in text  # an example
    assert "translation is printed tokenised" in text


def test_evaluate_recomputes_bleu(run):
    out, _, trained = run
    assert cli.main(["evaluate", str(out / "checkpoints" / "best.ckpt"), "--no-progress-bar"]) == 0
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert metrics["test_bleu"] == pytest.approx(trained["test_bleu"])  # train tests best.ckpt
    assert metrics["decode_tokens_per_s"] > 0 and "train_tokens_per_s" not in metrics
    assert metrics["model"] == "parallel-lmu"


def test_evaluate_needs_only_the_test_files(run, tmp_path):
    """The tokenisers travel in the checkpoint: ``plmu evaluate --data-dir`` with tst2013.en/vi
    alone scores as the training run did (it read all six: "lacks train.en")."""
    out, data, trained = run
    alone = tmp_path / "test-only"
    alone.mkdir()
    for name in ("tst2013.en", "tst2013.vi"):
        (alone / name).write_bytes((data / name).read_bytes())
    checkpoint = str(out / "checkpoints" / "best.ckpt")
    args = ["evaluate", checkpoint, "--data-dir", str(alone), "--out", str(tmp_path / "eval")]
    assert cli.main([*args, "--no-progress-bar"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test_bleu"] == pytest.approx(trained["test_bleu"])
    assert metrics["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-5)


def test_missing_data_is_one_line_cli_error(tmp_path, capsys):
    folder = write_iwslt(tmp_path / "data")
    (folder / "train.vi").unlink()
    code = cli.main(["train", "iwslt15-en-vi", "--data-dir", str(folder), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "lacks train.vi" in err and "\n" not in err


@pytest.mark.parametrize("written_before", [False, True])
def test_resumed_run_keeps_the_tokenisers_its_weights_were_trained_with(
    tmp_path, monkeypatch, written_before
):
    """The resumed process trains its tokenisers again; when they differ (the training lines
    changed, e.g. the hub's held-out validation split, or the tokenizers release did), the run
    goes on with the checkpoint's tokenisers: its data is encoded, and its test translations
    decoded, with them. The tokenisers are stored once, in ``checkpoint["plmu"]["saved"]``
    (Lightning's datamodule state held them a second time); ``written_before``: a checkpoint
    that holds both copies, as they did."""
    import plmu.data.iwslt as iwslt

    data = write_iwslt(tmp_path / "data", n_train=48, n_eval=6, extra_train=2)
    options = [o for o in TINY if not o.startswith(("epochs=", "vocab_size="))] + ["vocab_size=60"]
    trained = iwslt.train_tokenizer
    monkeypatch.setattr(  # the first process's tokenisers: other merges, the same sizes
        iwslt, "train_tokenizer", lambda lines, size: trained([*lines, *lines[:1] * 40], size)
    )
    train("iwslt15-en-vi", out=tmp_path / "run", overrides=[*options, "epochs=1"], data_dir=data,
          progress_bar=False)  # fmt: skip
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)
    first = checkpoint["plmu"]
    assert "IWSLTDataModule" not in checkpoint  # stored once
    if written_before:
        checkpoint["IWSLTDataModule"] = dict(first["saved"])
        torch.save(checkpoint, tmp_path / "run/checkpoints/last.ckpt")
    monkeypatch.undo()
    en, vi = read_data_dir(data)["train"]
    for lines, key in ((en, "src_tokenizer"), (vi, "tgt_tokenizer")):
        stored = Tokenizer.from_str(first["saved"][key])
        assert trained(lines, 60).to_str() != stored.to_str()
        assert trained(lines, 60).get_vocab_size() == stored.get_vocab_size()
    metrics = train("iwslt15-en-vi", out=tmp_path / "run", overrides=[*options, "epochs=2"],
                    data_dir=data, progress_bar=False)  # fmt: skip
    last = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)
    assert last["epoch"] == 1 and last["plmu"]["saved"] == first["saved"]
    assert "IWSLTDataModule" not in last
    _, _, module, dm = load_checkpoint(metrics["best_checkpoint"], data)
    module.hypotheses = []
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(
        module, datamodule=dm, verbose=False
    )
    hypotheses = (tmp_path / "run" / "tst2013.hyp.vi").read_text(encoding="utf-8").splitlines()
    assert hypotheses == module.hypotheses  # decoded with the checkpoint's tokeniser


@pytest.mark.slow
def test_plain_trainer_learns_the_toy_language(tmp_path):
    """A few hundred steps on the toy language: the loss falls and BLEU is clearly above 0."""
    L.seed_everything(0, verbose=False)
    exp = registry.get("iwslt15-en-vi")
    config = load_config(
        "iwslt15-en-vi",
        overrides=[
            *TINY,
            "d_model=32",
            "beam_size=1",
            "batch_size=16",
            "dropout=0.0",
            "lr=0.01",
            "label_smoothing=0.0",
        ],
    )
    dm = exp.build_data(config, write_iwslt(tmp_path, n_train=256, n_eval=16, seed=3), None)
    dm.prepare_data()
    dm.setup("fit")
    module = exp.build_model(config, dm)
    assert isinstance(module, TranslationModule) and isinstance(dm, IWSLTDataModule)
    trainer = L.Trainer(
        max_epochs=12,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=dm)
    result = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert result["test_loss"] < 1.0
    assert result["test_bleu"] > 30.0
    assert torch.isfinite(torch.tensor(result["test_loss"]))


def test_corpus_bleu_and_its_tokeniser():
    refs = ["tôi thích con mèo , nhỏ .", "bạn có một cuốn sách ."]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert corpus_bleu([], []) == 0.0
    glued = ["tôi thích con mèo, nhỏ.", "bạn có một cuốn sách."]
    # 13a splits the punctuation again; "none" (multi-bleu style) compares tokens as given
    assert corpus_bleu(glued, refs, "13a") == pytest.approx(100.0)
    assert corpus_bleu(glued, refs, "none") < 100.0
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_bleu(refs, refs[:1])


def _toy_translation(targets: list[int], batch_size: int, **settings):
    """An untrained TranslationModule on random pairs with these target lengths, its loader
    and a plain CPU trainer."""
    from torch.utils.data import DataLoader

    from plmu.data.iwslt import TranslationDataset, collate
    from plmu.models.seq2seq import LMUSeq2Seq

    torch.manual_seed(0)
    net = LMUSeq2Seq(12, 12, d_model=8, order=2, theta=2.0, encoder_layers=1, decoder_layers=1)
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(4, 12, (n,), generator=g).tolist()

    sources = [[*ids(2 + i % 3), 3] for i in range(len(targets))]
    data = TranslationDataset(sources, [ids(n) for n in targets], ["x"] * len(targets))
    loader = DataLoader(data, batch_size=batch_size, collate_fn=collate)
    module = TranslationModule(net, lambda row: " ".join(map(str, row)), **settings)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    return net, loader, module, trainer


def test_val_and_test_loss_are_the_mean_over_target_tokens():
    """``val_loss``/``test_loss`` are cross-entropy per target token over the whole split; they
    were the mean of the batch means weighted by sentences, so they depended on the batching
    (here: one 31-token target and two of 2-3 tokens, one pair per batch)."""
    import torch.nn.functional as F

    from plmu.data.iwslt import PAD

    net, loader, module, trainer = _toy_translation([30, 1, 2], 1, max_decode_length=5)
    val = trainer.validate(module, dataloaders=loader, verbose=False)[0]["val_loss"]
    test = trainer.test(module, dataloaders=loader, verbose=False)[0]["test_loss"]
    total = count = 0
    with torch.no_grad():
        for batch in loader:
            logits = net.eval()(batch.src, batch.src_lengths, batch.tgt_in)
            total += F.cross_entropy(
                logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD, reduction="sum"
            ).item()
            count += int((batch.tgt_out != PAD).sum())
    assert count == 31 + 2 + 3
    assert val == pytest.approx(total / count, rel=1e-5)
    assert test == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_decode_tokens_count_an_end_only_where_one_was_generated(beam_size):
    """``decode_tokens_per_s`` counts generated tokens, ``</s>`` included: a hypothesis cut at
    its length limit generated no ``</s>`` (one token too many was counted per such line)."""
    net, loader, module, trainer = _toy_translation(
        [3] * 16, 4, max_decode_length=3, beam_size=beam_size
    )
    with torch.no_grad():  # sharper, more uneven distributions: some lines end early
        net.out.weight.mul_(8.0)
        net.out.bias.normal_(0, 2, generator=torch.Generator().manual_seed(1))
    trainer.test(module, dataloaders=loader, verbose=False)
    lengths = [len(h.split()) for h in module.hypotheses]
    assert 3 in lengths and min(lengths) < 2  # cut at the limit, and ended by </s>
    assert module.timing["decode_tokens"] == sum(min(n + 1, 3) for n in lengths)


def test_reported_bleu_is_sacrebleus_score_of_the_written_translations(tmp_path):
    """``test_bleu`` in metrics.json (what ``finish`` returns) is sacreBLEU's corpus score of
    the lines of tst2013.hyp.vi against the references, to the last digit: Lightning's logged
    value is float32 (88.24968719... for 88.24969025...)."""
    import sacrebleu

    from plmu.experiments.iwslt15_en_vi import finish

    net, loader, module, trainer = _toy_translation([3] * 8, 4, max_decode_length=9)
    with torch.no_grad():
        net.out.bias[3] = -1e4  # no </s>: every translation has 9 tokens, 4-grams to match
        hyps = [
            " ".join(map(str, row))
            for batch in loader
            for row in module.eval().translate_ids(batch.src, batch.src_lengths)
        ]
    refs = [h if i % 2 else f"{h} 5 7 8" for i, h in enumerate(hyps)]
    loader.dataset.refs[:] = refs
    logged = trainer.test(module, dataloaders=loader, verbose=False)[0]["test_bleu"]
    reported = finish(module, None, tmp_path)["test_bleu"]
    lines = (tmp_path / "tst2013.hyp.vi").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and lines[:-1] == hyps
    expected = sacrebleu.corpus_bleu(lines[:-1], [refs], tokenize="13a").score
    assert 0 < expected < 100 and logged == pytest.approx(expected)
    assert reported == expected


def test_merge_shards_restores_the_test_order_without_repeats():
    """Under DDP each process decodes a shard: DistributedSampler deals indices 0, 2, 4 and
    1, 3, 0 (the first repeated to even the shards) for 5 pairs on 2 processes."""
    from plmu.training.translation import merge_shards

    shards = [
        ([0, 2, 4], ["h0", "h2", "h4"], ["r0", "r2", "r4"]),
        ([1, 3, 0], ["h1", "h3", "h0"], ["r1", "r3", "r0"]),
    ]
    assert merge_shards(shards) == ([f"h{i}" for i in range(5)], [f"r{i}" for i in range(5)])
    # batches without dataset positions: concatenated as they came
    assert merge_shards([(None, ["a"], ["x"]), (None, ["b"], ["y"])]) == (["a", "b"], ["x", "y"])


@pytest.mark.slow
def test_ddp_bleu_and_translations_cover_the_test_set_once(tmp_path):
    """Two CPU processes (~15 s): tst2013.hyp.vi held rank 0's shard only (3 of 5 lines) and
    test_bleu counted the pair DistributedSampler repeats; both now follow the test set."""
    import subprocess
    import sys

    import sacrebleu

    data = write_iwslt(tmp_path / "data", n_train=24, n_eval=5)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "plmu.cli", "train", "iwslt15-en-vi"]
    command += ["--data-dir", str(data), "--out", str(out), "--no-progress-bar"]
    command += ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    for setting in [*TINY, "batch_size=2", "beam_size=1", "max_decode_length=6"]:
        command += ["--set", setting]
    subprocess.run(command, check=True, timeout=600, cwd=tmp_path, capture_output=True)
    hyps = (out / "tst2013.hyp.vi").read_text(encoding="utf-8").splitlines()
    refs = (data / "tst2013.vi").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == len(refs) == 5
    single = json.loads((out / "metrics.json").read_text())["test_bleu"]
    assert single == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-4)


def test_decode_max_lengths():
    limit = decode_max_lengths(torch.tensor([1, 10, 200]), ratio=2.0, offset=10, cap=100)
    assert limit.tolist() == [12, 30, 100]
    # as Python computes the formula: float32 made 1.3 * 90 = 116.99999 (limit 116, not 117)
    lengths = list(range(1, 301))
    for ratio in (0.7, 1.1, 1.3, 1.5):
        limit = decode_max_lengths(torch.tensor(lengths), ratio=ratio, offset=3, cap=10**6)
        assert limit.tolist() == [math.floor(ratio * n) + 3 for n in lengths]


@pytest.mark.parametrize(
    ("argument", "value", "error", "message"),
    [
        ("ratio", "2", TypeError, "ratio must be a number, got str"),
        ("ratio", True, TypeError, "ratio must be a number, got bool"),
        ("ratio", float("nan"), ValueError, "ratio must be finite and >= 0"),
        ("offset", 2.5, TypeError, "offset must be an int, got float"),
        ("offset", "3", TypeError, "offset must be an int, got str"),
        ("cap", "100", TypeError, "cap must be an int >= 1, got str"),
        ("cap", 0, ValueError, "cap must be >= 1"),
    ],
)
def test_decode_max_lengths_names_a_bad_argument(argument, value, error, message):
    """``float("2")`` and ``int(2.5)`` passed silently (a ratio of 2, an offset of 2); a cap of
    0 gave limits of 0, not the 1 promised."""
    settings = {"ratio": 2.0, "offset": 10, "cap": 100, argument: value}
    with pytest.raises(error, match=message):
        decode_max_lengths(torch.tensor([1, 10]), **settings)


def test_lr_schedule_halves_after_eight_epochs():
    assert [lr_factor(e, 0.5, 8) for e in range(11)] == [1.0] * 8 + [0.5, 0.25, 0.125]
    assert lr_factor(5, 1.0, 0) == 1.0


def test_a_bleu_tokenizer_that_cannot_run_here_is_refused_before_training(monkeypatch):
    """sacreBLEU lists tokenisers that need extra packages (``flores101``: sentencepiece,
    ``ja-mecab``: mecab); one missing was accepted and failed at the end of training, when
    ``test_bleu`` was computed. A stand-in: ``intl`` made to fail to load."""
    from sacrebleu.metrics import bleu

    from plmu.models.seq2seq import LMUSeq2Seq
    from plmu.training.config import ConfigError

    real = bleu._get_tokenizer

    def get_tokenizer(name: str):
        if name == "intl":
            raise ImportError("install regex")
        return real(name)

    monkeypatch.setattr(bleu, "_get_tokenizer", get_tokenizer)
    net = LMUSeq2Seq(10, 10, d_model=8, order=2, theta=2.0)
    with pytest.raises(ValueError, match="bleu_tokenize 'intl' cannot run here: install regex"):
        TranslationModule(net, str, bleu_tokenize="intl")
    with pytest.raises(ConfigError, match=r"config key 'bleu_tokenize' .*install regex"):
        load_config("iwslt15-en-vi", overrides=["bleu_tokenize=intl"])
    TranslationModule(net, str, bleu_tokenize="none")
    assert load_config("iwslt15-en-vi", overrides=["bleu_tokenize=char"])["bleu_tokenize"] == "char"


def test_module_rejects_bad_settings():
    from plmu.models.seq2seq import LMUSeq2Seq

    net = LMUSeq2Seq(10, 10, d_model=8, order=2, theta=2.0)
    with pytest.raises(ValueError, match="bleu_tokenize"):
        TranslationModule(net, str, bleu_tokenize="moses")
    with pytest.raises(ValueError, match="beam_size"):
        TranslationModule(net, str, beam_size=0)
    with pytest.raises(ValueError, match="lr_decay"):
        TranslationModule(net, str, lr_decay=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        TranslationModule(net, str, label_smoothing=1.0)
    for value in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="length_penalty"):
            TranslationModule(net, str, length_penalty=value)
    with pytest.raises(ValueError, match="max_len_ratio"):
        TranslationModule(net, str, max_len_ratio=-0.5)
    with pytest.raises(ValueError, match="max_decode_length"):
        TranslationModule(net, str, max_decode_length=0)


@pytest.mark.parametrize(
    ("argument", "value", "kind"),
    [
        ("beam_size", 2.5, "an int"),
        ("beam_size", "3", "an int"),
        ("beam_size", True, "an int"),
        ("max_decode_length", 2.5, "an int"),
        ("max_decode_length", "3", "an int"),
        ("max_len_offset", 2.5, "an int"),
        ("length_penalty", "1", "a number"),
        ("max_len_ratio", "2", "a number"),
        ("max_len_ratio", True, "a number"),
        # not decoding settings: these failed in a comparison without a name, or passed
        ("label_smoothing", "0.1", "a number"),
        ("lr_decay", "0.5", "a number"),
        ("lr_decay_after", 2.5, "an int"),
        ("lr", "1e-3", "a number"),
        ("weight_decay", True, "a number"),
    ],
)
def test_a_decoding_setting_of_the_wrong_type_is_a_type_error_naming_it(argument, value, kind):
    """As every integer argument of the layers and models: a float, str or bool where an int is
    due is a TypeError naming the argument (``beam_size`` was a ValueError,
    ``max_decode_length=2.5`` and ``"3"`` passed as 2 and 3, ``length_penalty="1"`` failed in
    ``math.isfinite`` without a name)."""
    from plmu.models.seq2seq import LMUSeq2Seq

    net = LMUSeq2Seq(10, 10, d_model=8, order=2, theta=2.0)
    with pytest.raises(TypeError, match=f"{argument} must be {kind}"):
        TranslationModule(net, str, **{argument: value})


def test_a_beam_of_the_wrong_type_is_a_type_error_naming_it():
    """``translate_ids(beam_size=2.5)`` decoded with a beam of 2; ``translate_sentence``'s
    ``beam`` was a ValueError."""
    from types import SimpleNamespace

    from plmu.models.seq2seq import LMUSeq2Seq

    module = TranslationModule(LMUSeq2Seq(10, 10, d_model=8, order=2, theta=2.0), str)
    src, lengths = torch.tensor([[4, 5, 3]]), torch.tensor([3])
    for bad in (2.5, "3", True):
        with pytest.raises(TypeError, match="beam_size must be an int"):
            module.translate_ids(src, lengths, bad)
        with pytest.raises(TypeError, match="beam must be an int"):
            translate_sentence(module, SimpleNamespace(), "a b .", beam=bad)
        # before the checkpoint is read (as plmu generate checks its arguments)
        with pytest.raises(TypeError, match="beam must be an int"):
            translate("no-such.ckpt", "a b .", beam=bad)


@pytest.mark.parametrize("setting", ["length_penalty=-1", "max_decode_length=0"])
def test_bad_decoding_setting_fails_before_training(tmp_path, setting):
    """Decoding runs only when testing, after training: a bad decoding setting used to fail
    there, with the training done and no metrics.json; it is refused before training now."""
    data = write_iwslt(tmp_path / "data", n_train=16, n_eval=4)
    with pytest.raises(ValueError, match=setting.split("=")[0]):
        train(
            "iwslt15-en-vi",
            out=tmp_path / "run",
            overrides=[*TINY, setting],
            data_dir=data,
            accelerator="cpu",
            devices=1,
            progress_bar=False,
        )
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("written_before", [False, True])
def test_resumed_run_trains_as_the_uninterrupted_one(tmp_path, written_before):
    """Stopped after epoch 1 and resumed: the length buckets of epoch 2 (seed + epoch, through
    the sampler's set_epoch) and so the weights are those of one run of 2 epochs.
    ``written_before``: the checkpoint also holds the tokenisers in Lightning's datamodule
    state, as checkpoints written before did."""
    data = write_iwslt(tmp_path / "data", n_train=48, n_eval=6)
    overrides = [o for o in TINY if not o.startswith(("epochs=", "beam_size="))] + ["beam_size=1"]
    for out, epochs in (("ref", 2), ("run", 1), ("run", 2)):
        last = tmp_path / out / "checkpoints" / "last.ckpt"
        if written_before and last.is_file():
            checkpoint = torch.load(last, weights_only=False)
            checkpoint["IWSLTDataModule"] = dict(checkpoint["plmu"]["saved"])
            torch.save(checkpoint, last)
        train(
            "iwslt15-en-vi",
            out=tmp_path / out,
            overrides=[*overrides, f"epochs={epochs}"],
            data_dir=data,
            accelerator="cpu",
            devices=1,
            progress_bar=False,
        )
    assert_same_last_checkpoint(tmp_path / "ref", tmp_path / "run")


def test_run_interrupted_mid_epoch_resumes_exactly(tmp_path):
    """Length-bucketed batches (a custom batch sampler) in a worker process: resumed from a
    checkpoint written mid-epoch, the run reads the rest of the epoch's batches and ends with
    the uninterrupted run's weights, optimizer state and LR schedule (decayed after epoch 1)."""
    data = write_iwslt(tmp_path / "data", n_train=48, n_eval=6)
    overrides = [o for o in TINY if not o.startswith(("epochs=", "beam_size="))]
    overrides += ["beam_size=1", "epochs=2", "lr_decay_after=1", "num_workers=1"]
    overrides.append("checkpoint_every_n_steps=2")  # 6 steps per epoch

    def run(out: str, *callbacks):
        return train(
            "iwslt15-en-vi",
            out=tmp_path / out,
            overrides=overrides,
            data_dir=data,
            accelerator="cpu",
            devices=1,
            progress_bar=False,
            callbacks=callbacks,
        )

    reference = run("ref")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run("run", crash_at_step(9))
    assert loader_position(tmp_path / "run") == [{"epoch": 1, "batches": 2}]  # after step 8
    resumed = run("run")
    assert_same_last_checkpoint(tmp_path / "ref", tmp_path / "run")
    assert resumed["test_loss"] == reference["test_loss"]
