"""The paper's experiments; importing this package registers them all."""

from plmu.experiments import (
    mackey_glass,  # noqa: F401
    text8,  # noqa: F401
)
