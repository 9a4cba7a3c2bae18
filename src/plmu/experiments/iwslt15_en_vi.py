"""IWSLT'15 English-Vietnamese translation (``plmu train iwslt15-en-vi``).

Data: :mod:`plmu.data.iwslt`; model: :class:`plmu.models.seq2seq.LMUSeq2Seq`; objective and
BLEU: :class:`plmu.training.translation.TranslationModule`. The test metric is ``test_bleu``
(sacreBLEU on tst2013, greedy or beam search per the config's ``beam_size``); :func:`finish`
writes the test translations to ``OUT/tst2013.hyp.vi``, puts sacreBLEU's ``test_bleu`` in
``metrics.json`` exactly (Lightning logs it as float32) and adds the measured training and
decoding throughput (tokens/s).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from plmu.data.iwslt import IWSLTDataModule
from plmu.models.seq2seq import LMUSeq2Seq
from plmu.training.registry import Experiment, register
from plmu.training.translation import TranslationModule

__all__ = ["EXPERIMENT", "build_data", "build_model", "finish"]

NAME = "iwslt15-en-vi"


def build_data(config: dict, data_dir: Path | None, saved: dict | None) -> IWSLTDataModule:
    """The datamodule; with ``saved`` (a checkpoint's tokenisers) nothing is trained or read."""
    return IWSLTDataModule(
        data_dir=data_dir,
        batch_size=int(config["batch_size"]),
        vocab_size=int(config["vocab_size"]),
        max_source_length=int(config["max_source_length"]),
        max_target_length=int(config["max_target_length"]),
        saved=saved,
        hf_dataset=config.get("hf_dataset", "IWSLT/mt_eng_vietnamese"),
        hf_config=config.get("hf_config", "iwslt2015-en-vi"),
        hf_revision=config.get("hf_revision"),
        seed=int(config["seed"]),
        num_workers=int(config["num_workers"]),
    )


def build_model(config: dict, datamodule: L.LightningDataModule) -> TranslationModule:
    """An :class:`LMUSeq2Seq` sized from the datamodule's vocabularies, in its training wrapper."""
    if not isinstance(datamodule, IWSLTDataModule):
        raise TypeError(f"datamodule must be an IWSLTDataModule, got {type(datamodule).__name__}")
    model = LMUSeq2Seq(
        datamodule.src_vocab_size,
        datamodule.tgt_vocab_size,
        d_model=int(config["d_model"]),
        order=int(config["order"]),
        theta=float(config["theta"]),
        memory_size=int(config["memory_size"]),
        encoder_layers=int(config["encoder_layers"]),
        decoder_layers=int(config["decoder_layers"]),
        bidirectional=bool(config["bidirectional"]),
        dropout=float(config["dropout"]),
        tie_embeddings=bool(config["tie_embeddings"]),
    )
    return TranslationModule(
        model,
        # the datamodule's current tokeniser: a resumed fit swaps in the checkpoint's
        detokenize=datamodule.decode_target,
        lr=float(config["lr"]),
        weight_decay=float(config["weight_decay"]),
        label_smoothing=float(config["label_smoothing"]),
        lr_decay=float(config["lr_decay"]),
        lr_decay_after=int(config["lr_decay_after"]),
        beam_size=int(config["beam_size"]),
        length_penalty=float(config["length_penalty"]),
        max_len_ratio=float(config["max_len_ratio"]),
        max_len_offset=int(config["max_len_offset"]),
        max_decode_length=int(config["max_decode_length"]),
        bleu_tokenize=str(config["bleu_tokenize"]),
    )


def finish(module: L.LightningModule, datamodule: L.LightningDataModule, out: Path) -> dict:
    """Write ``OUT/tst2013.hyp.vi`` (one translation a line); return the exact ``test_bleu``
    and the throughput metrics."""
    if not isinstance(module, TranslationModule):
        raise TypeError(f"module must be a TranslationModule, got {type(module).__name__}")
    out = Path(out)
    extra: dict = dict(module.throughput())
    extra["test_beam_size"] = module.beam_size  # 1: greedy
    if module.bleu is not None:  # sacreBLEU's score as it is; Lightning logged it as float32
        extra["test_bleu"] = module.bleu
    if module.hypotheses:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tst2013.hyp.vi").write_text("\n".join(module.hypotheses) + "\n", encoding="utf-8")
    if isinstance(datamodule, IWSLTDataModule):
        extra["dropped_train_pairs"] = datamodule.dropped_train_pairs
        extra["truncated_test_sources"] = datamodule.truncated_sources.get("test", 0)
    return extra


EXPERIMENT = register(
    Experiment(
        name=NAME,
        summary="IWSLT'15 En->Vi translation, LMU encoder-decoder with attention, BLEU on tst2013",
        build_data=build_data,
        build_model=build_model,
        finish=finish,
    )
)
