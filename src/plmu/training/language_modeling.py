"""Next-token language modelling: cross-entropy, reported in bits per character (token).

Batches are ``(x, y)`` for training (every position scored) and ``(x, y, mask)`` for
validation/testing (only the ``mask`` positions scored; see ``plmu.data.text8.ScoredWindows``).
Logged: ``train_loss``/``train_bpc``, ``val_loss``/``val_bpc`` and ``test_loss``/``test_bpc``;
each batch mean is weighted by its number of scored tokens, so the epoch value is the exact mean
over the split (an evaluation epoch that scores no token is a ValueError naming the metric, not
NaN). ``bpc = loss / ln 2`` (loss in nats per token). Monitors ``val_bpc``.

The module times its training steps (forward, backward and optimiser step; data loading
excluded): :attr:`LanguageModeling.train_tokens_per_second`. Neither the steps nor their timing
synchronise the host with the device (the scored-token counts stay tensors; on CUDA the steps
are timed with events, :class:`~plmu.training.base.StepTimer`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from plmu.checks import _check_positive_int
from plmu.models.language_model import LMULanguageModel
from plmu.training.base import PlmuModule, StepTimer

__all__ = ["LanguageModeling"]

LN2 = math.log(2.0)


class LanguageModeling(PlmuModule):
    """Train and evaluate an :class:`~plmu.models.language_model.LMULanguageModel` (``net``).

    Args:
        net: the network.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay on weight matrices (not on biases, norms, embeddings).
        warmup_steps: linear warm-up over this many steps, then cosine decay to 0 by the last
            step of training.
    """

    monitor = "val_bpc"
    monitor_mode = "min"
    means = ("val_loss", "val_bpc", "test_loss", "test_bpc")

    def __init__(
        self,
        net: LMULanguageModel,
        lr: float,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(net, lr, weight_decay)
        self.warmup_steps = _check_positive_int(warmup_steps, "warmup_steps", 0)
        self.train_tokens = 0
        self._timer = StepTimer()

    @property
    def train_seconds(self) -> float:
        """Seconds of training steps so far (reading it waits for the device)."""
        return self._timer.seconds

    @property
    def train_tokens_per_second(self) -> float:
        """Training throughput so far: tokens per second of training steps (nan before any)."""
        seconds = self.train_seconds
        return self.train_tokens / seconds if seconds > 0 else math.nan

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``(batch, time)`` -> next-token logits ``(batch, time, vocab_size)``."""
        return self.net(tokens)[0]

    def _nll(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int | torch.Tensor]:
        """Mean negative log-likelihood (nats) over the scored tokens (0 if none), and their
        count: an int, or with a mask a 0-dim tensor on the device (reading it would sync)."""
        x, y, *rest = batch
        losses = F.cross_entropy(self(x).flatten(0, 1).float(), y.flatten(), reduction="none")
        if rest:
            mask = rest[0].flatten()
            count = mask.sum()
            return torch.where(mask, losses, 0).sum() / count.clamp_min(1), count
        return losses.mean(), losses.numel()

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        self._timer.start(self.device)

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        self._timer.stop(self.device)
        self.train_tokens += batch[1].numel()  # type: ignore[index]

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        loss, count = self._nll(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=count)
        self.log("train_bpc", loss / LN2, batch_size=count)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, ...], stage: str) -> None:
        loss, count = self._nll(batch)  # a batch without scored tokens weighs 0
        self.log_mean(f"{stage}_loss", loss, count)
        self.log_mean(f"{stage}_bpc", loss / LN2, count, prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict:
        decay, no_decay = [], []
        for name, p in self.net.named_parameters():
            if p.requires_grad:
                matrix = p.dim() >= 2 and not name.startswith("embedding")
                (decay if matrix else no_decay).append(p)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.lr,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.warmup_steps, total - 1)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
