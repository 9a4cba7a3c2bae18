"""Quora Question Pairs (GLUE): is question2 a duplicate of question1?"""

from plmu.experiments._text import register_text_experiment

EXPERIMENT = register_text_experiment(
    "qqp", "QQP duplicate questions: shared parallel-LMU encoder, pair features, MLP (accuracy)"
)
