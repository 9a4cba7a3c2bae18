"""The paper's experiments; importing this package registers them all (one line each)."""

from plmu.experiments import mackey_glass as mackey_glass
from plmu.experiments import psmnist as psmnist
