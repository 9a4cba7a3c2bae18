"""The paper's experiments; importing this package registers them all (one line each)."""

from plmu.experiments import (
    imdb,  # noqa: F401
    iwslt15_en_vi,  # noqa: F401
    mackey_glass,  # noqa: F401
    psmnist,  # noqa: F401
    qqp,  # noqa: F401
    snli,  # noqa: F401
    text8,  # noqa: F401
)
