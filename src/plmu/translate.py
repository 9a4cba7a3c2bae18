"""``plmu translate CHECKPOINT "sentence" [--beam K]``: translate with a trained IWSLT model.

Decoding runs in the step (RNN) form, carrying the decoder's LMU memories: greedy for
``beam=1``, length-normalised beam search otherwise (see :mod:`plmu.models.seq2seq`). An empty
sentence, or one with more subword tokens than the model's ``max_source_length``, raises
``ValueError`` (nothing is silently truncated).

The sentence must be tokenised as IWSLT'15 is, with the Moses tokeniser: punctuation and clitics
split off by spaces and ``' " & | < > [ ]`` written as ``&apos; &quot; &amp; &#124; &lt; &gt;
&#91; &#93;`` (``I &apos;d like it .``); the subword tokenisers learnt that text as it is. The
translation comes out tokenised and escaped in the same way, an unknown word the model emits
written ``<unk>``. See docs/iwslt.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from plmu.checks import _check_positive_int
from plmu.data.iwslt import IWSLTDataModule, encode_source
from plmu.training.translation import TranslationModule

__all__ = ["translate", "translate_sentence"]


def translate_sentence(
    module: TranslationModule,
    datamodule: IWSLTDataModule,
    sentence: str,
    beam: int | None = None,
) -> str:
    """Translate one English sentence with a loaded module (``beam=None``: the config's).

    ``sentence`` is Moses-tokenised, as the training data (see the module docstring); so is the
    translation returned.

    Raises:
        ValueError: empty or over-long ``sentence``, or ``beam < 1``.
        TypeError: a ``beam`` that is not an int (a float, a str or a bool).
    """
    if beam is not None:
        beam = _check_positive_int(beam, "beam")
    src_tok, tgt_tok = datamodule.src_tokenizer, datamodule.tgt_tokenizer
    if src_tok is None or tgt_tok is None:
        raise ValueError("the datamodule has no tokenisers; load it from a checkpoint")
    ids = encode_source(src_tok, sentence, datamodule.max_source_length)
    src = torch.tensor([ids], dtype=torch.long, device=module.device)
    lengths = torch.tensor([len(ids)], dtype=torch.long, device=module.device)
    module.eval()
    with torch.no_grad():
        out = module.translate_ids(src, lengths, beam)[0]
    return datamodule.decode_target(out)


def translate(checkpoint: str | Path, sentence: str, beam: int | None = None) -> str:
    """Load ``checkpoint`` (an ``iwslt15-en-vi`` run) and translate ``sentence`` (``beam`` is
    checked first, before the checkpoint is read)."""
    from plmu.training.checkpoints import load_checkpoint

    if beam is not None:
        _check_positive_int(beam, "beam")

    experiment, _, module, datamodule = load_checkpoint(checkpoint)
    if not isinstance(module, TranslationModule) or not isinstance(datamodule, IWSLTDataModule):
        raise ValueError(
            f"checkpoint {checkpoint} is of the {experiment.name} experiment: plmu translate "
            "takes iwslt15-en-vi checkpoints"
        )
    return translate_sentence(module, datamodule, sentence, beam)
