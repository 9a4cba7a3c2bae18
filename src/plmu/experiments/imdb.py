"""IMDB movie-review sentiment (25k train / 25k test reviews, positive or negative)."""

from plmu.experiments._text import register_text_experiment

EXPERIMENT = register_text_experiment(
    "imdb", "IMDB sentiment: embedding, parallel LMU, linear classifier (test accuracy)"
)
