"""The translation objective: teacher-forced cross-entropy, sacreBLEU on decoded test sets.

:class:`TranslationModule` wraps :class:`~plmu.models.seq2seq.LMUSeq2Seq`. It logs
``train_loss``, ``val_loss``, ``test_loss`` (cross-entropy in nats per target token, ``</s>``
included; each batch's mean weighted by its number of target tokens, so the epoch value is the
mean over the split's tokens) and, at the end of testing, ``test_bleu``
(``sacrebleu.corpus_bleu`` of the decoded hypotheses against the reference lines as given, with
sacreBLEU's ``bleu_tokenize`` tokeniser: ``"13a"`` by default; ``"none"`` on the already
tokenised IWSLT files gives the tokenised BLEU of ``multi-bleu.perl`` that Luong & Manning 2015
report). It also measures throughput:

* ``train_tokens_per_s``: source + target subword tokens (padding excluded) per second of
  training-step time (forward, backward, optimiser step; on CUDA timed with events and the
  tokens counted on the device, so training steps do not synchronise the host with the device:
  :class:`~plmu.training.base.StepTimer`);
* ``decode_tokens_per_s``: generated tokens (``</s>`` included) per second of decoding time on
  the test set, and ``decode_sentences_per_s``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import sacrebleu
import torch
import torch.nn.functional as F

from plmu.checks import _check_int, _check_positive_int, _check_real, _reads_values
from plmu.data.iwslt import PAD, TranslationBatch
from plmu.models.seq2seq import LMUSeq2Seq
from plmu.training.base import PlmuModule, StepTimer

__all__ = [
    "TranslationModule",
    "bleu_tokenizer_problem",
    "corpus_bleu",
    "decode_max_lengths",
    "lr_factor",
    "merge_shards",
]


def decode_max_lengths(
    src_lengths: torch.Tensor, ratio: float, offset: int, cap: int
) -> torch.Tensor:
    """Most tokens to generate per source, ``min(cap, floor(ratio * source length) + offset)``
    and at least 1: (B,), on ``src_lengths``' device.

    The product is taken in float64 (on the CPU, which every device's lengths reach), as Python
    computes it: in float32 ``1.3 * 90`` was ``116.99999`` and the limit one token short.

    Raises:
        TypeError: ``ratio`` not a real number, ``offset`` or ``cap`` not an int.
        ValueError: ``ratio`` not finite or negative, ``cap < 1``.
    """
    ratio = _check_real(ratio, "ratio")
    if not (math.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"ratio must be finite and >= 0, got {ratio}")
    offset = _check_int(offset, "offset")
    cap = _check_positive_int(cap, "cap")
    lengths = src_lengths.detach().to("cpu", torch.float64)
    limit = (lengths * ratio).floor().long() + offset
    return limit.clamp(min=1, max=cap).to(src_lengths.device)


def bleu_tokenizer_problem(name: str) -> str | None:
    """Why sacreBLEU's tokeniser ``name`` (one of ``sacrebleu.BLEU.TOKENIZERS``) cannot run
    here, or ``None``: some need packages sacreBLEU does not install (``flores101``,
    ``flores200``, ``spm``, ``spBLEU-1K``: sentencepiece; ``ja-mecab``, ``ko-mecab``: mecab).
    Loading it now refuses such a setting before training, not when ``test_bleu`` is due."""
    try:
        sacrebleu.BLEU(tokenize=name)
    except (ImportError, RuntimeError, OSError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return " ".join(lines) or type(err).__name__
    return None


def lr_factor(epoch: int, decay: float, decay_after: int) -> float:
    """Learning-rate factor of 0-based ``epoch``: ``decay ** max(0, epoch - decay_after + 1)``."""
    return decay ** max(0, epoch - decay_after + 1)


def corpus_bleu(hypotheses: list[str], references: list[str], tokenize: str = "13a") -> float:
    """sacreBLEU corpus score (0-100) of ``hypotheses`` against one reference each.

    ``force=True``: the IWSLT files are tokenised on purpose, so sacreBLEU's warning about
    tokenised input is not shown. No hypotheses give 0.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return 0.0
    return float(
        sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize, force=True).score
    )


Shard = tuple[list[int] | None, list[str], list[str]]  # (dataset positions, hypotheses, refs)


def merge_shards(shards: list[Shard]) -> tuple[list[str], list[str]]:
    """The hypotheses and references of the test set from every process's shard.

    With dataset positions (every shard has them): in the dataset's order, each pair once
    (a set smaller than the number of processes is read whole by each: see
    :class:`~plmu.training.datamodule.ShardSampler`). Without them: the
    shards concatenated as they are.
    """
    if any(indices is None for indices, _, _ in shards):
        hypotheses = [h for _, hyps, _ in shards for h in hyps]
        return hypotheses, [r for _, _, refs in shards for r in refs]
    merged: dict[int, tuple[str, str]] = {}
    for indices, hyps, refs in shards:
        for i, h, r in zip(indices, hyps, refs):  # type: ignore[arg-type]
            merged.setdefault(i, (h, r))
    order = sorted(merged)
    return [merged[i][0] for i in order], [merged[i][1] for i in order]


class TranslationModule(PlmuModule):
    """Lightning wrapper: training, validation, BLEU testing and decoding of an LMUSeq2Seq.

    Args:
        net: the network (``self.net``).
        detokenize: token ids -> text (the target tokeniser's ``decode``).
        lr, weight_decay: Adam (AdamW when ``weight_decay > 0``), see
            :class:`~plmu.training.base.PlmuModule`; the runner clips gradients
            (``gradient_clip_val``).
        label_smoothing: of the training cross-entropy.
        lr_decay, lr_decay_after: from epoch ``lr_decay_after`` on (0-based), multiply the
            learning rate by ``lr_decay`` every epoch (Luong & Manning 2015 halve it after 8
            epochs); ``lr_decay = 1`` keeps it constant. See :func:`lr_factor`.
        beam_size: ``1`` decodes the test set greedily, ``> 1`` with beam search.
        length_penalty: beam-search length normalisation exponent.
        max_len_ratio, max_len_offset, max_decode_length: decoding limit per source, see
            :func:`decode_max_lengths`.
        bleu_tokenize: sacreBLEU's ``tokenize`` (``"13a"``, ``"none"``, ``"intl"``, ...).

    An argument of the wrong type (``beam_size=2.5``, ``max_decode_length="3"``,
    ``length_penalty=True``, ``lr_decay="0.5"``) is a TypeError naming it; one out of range a
    ValueError.
    """

    def __init__(
        self,
        net: LMUSeq2Seq,
        detokenize: Callable[[list[int]], str],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.1,
        lr_decay: float = 1.0,
        lr_decay_after: int = 0,
        beam_size: int = 1,
        length_penalty: float = 1.0,
        max_len_ratio: float = 2.0,
        max_len_offset: int = 10,
        max_decode_length: int = 200,
        bleu_tokenize: str = "13a",
    ) -> None:
        super().__init__(net, lr, weight_decay)
        label_smoothing = _check_real(label_smoothing, "label_smoothing")
        lr_decay = _check_real(lr_decay, "lr_decay")
        lr_decay_after = _check_positive_int(lr_decay_after, "lr_decay_after", 0)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        # a wrong type is a TypeError naming the argument (as the layers' and models' integer
        # arguments), not silently int() or float() of it
        beam_size = _check_positive_int(beam_size, "beam_size")
        length_penalty = _check_real(length_penalty, "length_penalty")
        max_len_ratio = _check_real(max_len_ratio, "max_len_ratio")
        max_len_offset = _check_positive_int(max_len_offset, "max_len_offset", 0)
        max_decode_length = _check_positive_int(max_decode_length, "max_decode_length")
        if bleu_tokenize not in sacrebleu.BLEU.TOKENIZERS:
            raise ValueError(
                f"bleu_tokenize must be one of {sorted(sacrebleu.BLEU.TOKENIZERS)}, "
                f"got {bleu_tokenize!r}"
            )
        problem = bleu_tokenizer_problem(bleu_tokenize)
        if problem is not None:
            raise ValueError(f"bleu_tokenize {bleu_tokenize!r} cannot run here: {problem}")
        if not 0.0 < lr_decay <= 1.0:
            raise ValueError(f"lr_decay must lie in (0, 1], got {lr_decay}")
        # decoding runs only at test time, after training: refuse bad settings now
        if not (math.isfinite(length_penalty) and length_penalty >= 0):
            raise ValueError(f"length_penalty must be finite and >= 0, got {length_penalty}")
        if not (math.isfinite(max_len_ratio) and max_len_ratio >= 0):
            raise ValueError(f"max_len_ratio must be finite and >= 0, got {max_len_ratio}")
        self.detokenize = detokenize
        self.lr_decay, self.lr_decay_after = lr_decay, lr_decay_after
        self.bleu_tokenize = bleu_tokenize
        self.label_smoothing = float(label_smoothing)
        self.beam_size = int(beam_size)
        self.length_penalty = float(length_penalty)
        self.max_len_ratio, self.max_len_offset = float(max_len_ratio), int(max_len_offset)
        self.max_decode_length = int(max_decode_length)
        self.hypotheses: list[str] = []
        self.references: list[str] = []
        self._indices: list[int] | None = []  # dataset positions of the decoded pairs
        # the last test's BLEU as sacreBLEU computed it: the logged ``test_bleu`` is float32
        self.bleu: float | None = None
        self.timing = {"train_s": 0.0, "train_tokens": 0, "decode_s": 0.0, "decode_tokens": 0}
        self._decoded_sentences = 0
        self._train_timer = StepTimer()
        self._train_tokens: torch.Tensor | None = None  # counted on the device, not yet added

    # ------------------------------------------------------------------------ training

    def on_before_batch_transfer(self, batch: object, dataloader_idx: int) -> object:
        """Check a batch's lengths and token ids while it is still on the host, where reading
        them is free; the steps then check types and shapes alone (:meth:`_loss`)."""
        if isinstance(batch, TranslationBatch):
            self.net._check_batch(batch.src, batch.src_lengths, batch.tgt_in)
        return batch

    def _loss(self, batch: TranslationBatch, smoothing: float) -> torch.Tensor:
        """Mean cross-entropy per target token (``</s>`` included, padding not).

        The values of a batch on an accelerator are not read again (a host/device sync every
        step): :meth:`on_before_batch_transfer` checked them on the host."""
        logits = self.net(
            batch.src, batch.src_lengths, batch.tgt_in, check_values=_reads_values(batch.src)
        )
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            batch.tgt_out.reshape(-1),
            ignore_index=PAD,
            label_smoothing=smoothing,
        )

    @staticmethod
    def _target_tokens(batch: TranslationBatch) -> torch.Tensor:
        """The batch's weight in an epoch mean of :meth:`_loss`: its number of target tokens,
        a 0-dim tensor on the batch's device (Lightning takes it as ``batch_size`` and
        accumulates on the device: no host sync)."""
        return (batch.tgt_out != PAD).sum()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, batch: TranslationBatch, batch_idx: int) -> None:
        self._train_timer.start(self.device)

    def on_train_batch_end(self, outputs, batch: TranslationBatch, batch_idx: int) -> None:
        self._train_timer.stop(self.device)
        tokens = batch.src_lengths.sum() + self._target_tokens(batch).to(batch.src_lengths.device)
        self._train_tokens = tokens if self._train_tokens is None else self._train_tokens + tokens

    def on_train_epoch_end(self) -> None:
        self._add_train_timing()

    def _add_train_timing(self) -> None:
        """Move the training time and the tokens counted on the device into :attr:`timing`
        (one host/device sync)."""
        self.timing["train_s"] = self._train_timer.seconds
        if self._train_tokens is not None:
            self.timing["train_tokens"] += int(self._train_tokens)
            self._train_tokens = None

    def training_step(self, batch: TranslationBatch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, self.label_smoothing)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.src.shape[0])
        return loss

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        if self.lr_decay == 1.0:
            return optimizer
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: lr_factor(epoch, self.lr_decay, self.lr_decay_after)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }

    def validation_step(self, batch: TranslationBatch, batch_idx: int) -> None:
        loss, tokens = self._loss(batch, 0.0), self._target_tokens(batch)
        self.log_mean("val_loss", loss, tokens, prog_bar=True)

    # ------------------------------------------------------------------------ decoding

    def translate_ids(
        self, src: torch.Tensor, src_lengths: torch.Tensor, beam_size: int | None = None
    ) -> list[list[int]]:
        """Decode a padded source batch ``(B, S)`` with this module's settings -> token lists."""
        beam = self.beam_size if beam_size is None else _check_positive_int(beam_size, "beam_size")
        limit = decode_max_lengths(
            src_lengths, self.max_len_ratio, self.max_len_offset, self.max_decode_length
        )
        if beam == 1:
            return self.net.greedy(src, src_lengths, limit)
        return self.net.beam_search(src, src_lengths, limit, beam, self.length_penalty)

    def on_test_epoch_start(self) -> None:
        self.hypotheses, self.references, self._indices = [], [], []

    def test_step(self, batch: TranslationBatch, batch_idx: int) -> None:
        n = batch.src.shape[0]
        loss, tokens = self._loss(batch, 0.0), self._target_tokens(batch)
        self.log_mean("test_loss", loss, tokens)
        self._sync()
        t0 = time.perf_counter()
        ids = self.translate_ids(batch.src, batch.src_lengths)
        self._sync()
        self.timing["decode_s"] += time.perf_counter() - t0
        # </s> was generated unless a hypothesis stopped at its length limit
        limit = decode_max_lengths(
            batch.src_lengths, self.max_len_ratio, self.max_len_offset, self.max_decode_length
        ).tolist()
        self.timing["decode_tokens"] += sum(min(len(row) + 1, m) for row, m in zip(ids, limit))
        self._decoded_sentences += n
        self.hypotheses += [self.detokenize(row) for row in ids]
        self.references += list(batch.refs)
        if self._indices is not None and batch.indices is not None:
            self._indices += batch.indices
        else:
            self._indices = None

    def on_test_epoch_end(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # each process decoded a shard: every one now takes the whole test set, in order
            # and each pair once, so the BLEU and rank 0's tst2013.hyp.vi (finish) cover it
            gathered: list = [None] * torch.distributed.get_world_size()
            shard = (self._indices, self.hypotheses, self.references)
            torch.distributed.all_gather_object(gathered, shard)
            self.hypotheses, self.references = merge_shards(gathered)
            self._indices = None
        self.bleu = corpus_bleu(self.hypotheses, self.references, self.bleu_tokenize)
        self.log("test_bleu", self.bleu, rank_zero_only=True)

    def throughput(self) -> dict[str, float]:
        """Measured throughput so far (only the parts that ran in this process)."""
        out: dict[str, float] = {}
        self._add_train_timing()
        t = self.timing
        if t["train_s"] > 0:
            out["train_tokens_per_s"] = t["train_tokens"] / t["train_s"]
        if t["decode_s"] > 0:
            out["decode_tokens_per_s"] = t["decode_tokens"] / t["decode_s"]
            out["decode_sentences_per_s"] = self._decoded_sentences / t["decode_s"]
        return out
