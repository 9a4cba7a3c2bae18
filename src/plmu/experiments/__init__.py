"""The paper's experiments; importing this package registers them all."""

from plmu.experiments import (
    iwslt15_en_vi,  # noqa: F401
    mackey_glass,  # noqa: F401
)
