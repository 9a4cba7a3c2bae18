import pytest

from plmu.training import registry
from plmu.training.registry import Experiment


def test_builtin_experiments_registered() -> None:
    assert {"mackey-glass", "psmnist"} <= set(registry.names())
    assert registry.get("mackey-glass").name == "mackey-glass"


def test_unknown_experiment_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown experiment 'nope'.*mackey-glass.*psmnist"):
        registry.get("nope")


def test_register_rejects_non_experiment() -> None:
    with pytest.raises(TypeError, match="Experiment"):
        registry.register("mackey-glass")  # type: ignore[arg-type]


def test_name_taken_by_another_module() -> None:
    def build_model(config, datamodule):
        raise AssertionError

    clash = Experiment(
        "mackey-glass", "clash", build_data=lambda c, d, s: None, build_model=build_model
    )
    with pytest.raises(ValueError, match="already registered"):
        registry.register(clash)


def test_register_and_get_a_new_experiment() -> None:
    def build_model(config, datamodule):
        raise AssertionError

    exp = registry.register(
        Experiment("test-only", "a test", build_data=lambda c, d, s: None, build_model=build_model)
    )
    try:
        assert registry.get("test-only") is exp and "test-only" in registry.names()
    finally:
        registry._REGISTRY.pop("test-only")
