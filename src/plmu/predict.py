"""``plmu predict CHECKPOINT TEXT [TEXT2]``: classify a text (or a pair) with a trained model.

The checkpoint carries its vocabulary, so no data is read: the text is encoded as in training,
run through the model and the most probable label is returned with its probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from plmu.data.text_classification import TextClassificationData

__all__ = ["Prediction", "predict", "predict_loaded"]


@dataclass(frozen=True)
class Prediction:
    """The most probable ``label`` (its name), its ``probability`` and every class's."""

    label: str
    probability: float
    probabilities: dict[str, float]

    def __str__(self) -> str:
        return f"{self.label}\t{self.probability:.4f}"


def predict_loaded(
    module: L.LightningModule, data: L.LightningDataModule, *texts: str
) -> Prediction:
    """Classify one example with a loaded ``module`` and its ``data`` (for the vocabulary).

    Args:
        texts: one text, or two for a pair task (e.g. ``question1, question2``).

    Raises:
        ValueError: a model that is not a text classifier, the wrong number of texts, an empty
            text or one longer than the model's ``max_length`` tokens.
    """
    if not isinstance(data, TextClassificationData):
        raise ValueError(
            "plmu predict needs a text classification checkpoint (imdb, qqp, snli), "
            f"not one whose data is {type(data).__name__}"
        )
    inputs = data.encode(*texts)
    module.eval()
    device = next(module.parameters()).device
    with torch.no_grad():
        logits = module(*(t.to(device) for t in inputs))
    probabilities = torch.softmax(logits.float(), dim=-1)[0].cpu()
    best = int(probabilities.argmax())
    names = data.label_names
    return Prediction(
        names[best],
        float(probabilities[best]),
        {name: float(p) for name, p in zip(names, probabilities)},
    )


def predict(checkpoint: str | Path, *texts: str) -> Prediction:
    """Load ``checkpoint`` (written by ``plmu train imdb|qqp|snli``) and classify ``texts``."""
    from plmu.training.checkpoints import load_checkpoint

    experiment, _, module, data = load_checkpoint(checkpoint)
    if not isinstance(data, TextClassificationData):
        raise ValueError(
            f"checkpoint {checkpoint} is of the {experiment.name} experiment: plmu predict takes "
            "imdb, qqp or snli checkpoints"
        )
    return predict_loaded(module, data, *texts)
