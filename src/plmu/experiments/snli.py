"""SNLI natural-language inference: entailment, neutral or contradiction."""

from plmu.experiments._text import register_text_experiment

EXPERIMENT = register_text_experiment(
    "snli", "SNLI inference: shared parallel-LMU encoder, pair features, MLP (accuracy)"
)
