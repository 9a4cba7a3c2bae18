"""Networks for the benchmarks, built from plmu layers (and the LSTM baseline)."""

from plmu.models.classifier import SequenceClassifier
from plmu.models.regressor import SequenceRegressor
from plmu.models.seq2seq import LMUSeq2Seq
from plmu.models.stack import MODELS, RecurrentStack

__all__ = ["MODELS", "LMUSeq2Seq", "RecurrentStack", "SequenceClassifier", "SequenceRegressor"]
