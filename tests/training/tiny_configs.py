"""Tiny configs that run any experiment end to end in a few seconds."""

TINY_MACKEY_GLASS = [
    "epochs=1",
    "train_length=400",
    "val_length=120",
    "test_length=120",
    "window=32",
    "stride=16",
    "warmup=4",
    "batch_size=8",
    "hidden_size=8",
    "lmu_hidden_size=6",
    "lstm_hidden_size=6",
    "num_layers=2",
    "num_threads=1",
]

TINY_PSMNIST = [
    "epochs=1",
    "batch_size=8",
    "val_size=10",
    "hidden_size=12",
    "order=16",
    "lmu_hidden_size=6",
    "lmu_order=8",
    "lstm_hidden_size=6",
    "num_threads=1",
]


def sets(values: list[str]) -> list[str]:
    """``["--set", v, ...]`` for the command line."""
    return [arg for value in values for arg in ("--set", value)]
