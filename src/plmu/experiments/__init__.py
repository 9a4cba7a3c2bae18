"""The paper's experiments; importing this package registers them all."""

from plmu.experiments import mackey_glass  # noqa: F401
from plmu.experiments import psmnist  # noqa: F401
