"""The settings that give a module's weights their meaning, saved beside them in its state dict.

A state dict holds tensors, and some settings shape none of them: a ``LegendreMemory`` saved
with ``discretizer="bilinear"`` loaded into a ``"zoh"`` one, or a ``ParallelLMU`` saved with
``hidden_activation="tanh"`` into a ``"relu"`` one, took the weights without a word and computed
other outputs with them. :class:`_SavedConfig` records those settings as the module's
``_extra_state`` entry (``{"discretizer": "zoh", ...}``, plain Python values) and refuses a state
dict saved with other values: ``load_state_dict`` raises its RuntimeError naming the entry and
the setting (beside any other error, such as a weight of another shape), with ``strict=False``
too, as for a weight of another shape. A state dict without the entry (written before it was
saved) loads as before, unchecked, also with ``strict=True``.

The entry lives in ``state_dict()`` only: parameters, buffers and the forward pass do not see it
(``torch.compile``, ``torch.export``, ``torch.func.functional_call`` with the parameters and
buffers, and DDP's broadcast of them are as before). What takes a state dict of tensors only
(``functional_call(model, model.state_dict(), ...)``, safetensors' ``save_file``, an exported
program's module's ``load_state_dict``) needs it dropped: ``{k: v for k, v in sd.items() if
torch.is_tensor(v)}`` (docs/library.md, "Saved settings").
"""

from __future__ import annotations

from typing import Any

__all__: list[str] = []

_KEY = "_extra_state"  # torch.nn.Module's name for it, under the module's prefix


class _SavedConfig:
    """Mixin (before :class:`torch.nn.Module` in the bases) that saves :meth:`_saved_config` in the
    state dict and checks it on loading."""

    def _saved_config(self) -> dict[str, Any]:
        """The settings that change what the module computes with given weights and that no
        weight's shape or key shows, as plain Python values."""
        raise NotImplementedError

    def get_extra_state(self) -> dict[str, Any]:
        return self._saved_config()

    def set_extra_state(self, state: Any) -> None:
        problem = self._saved_config_problem(state)
        if problem is not None:
            raise ValueError(f"{_KEY}: {problem}")

    def _saved_config_problem(self, saved: Any) -> str | None:
        """What is wrong with ``saved`` (a state dict's entry): the first setting it gives
        otherwise than this module, or not a dict of settings; ``None`` if nothing. A setting
        this version does not record (saved by a later one) is ignored."""
        name = type(self).__name__
        if not isinstance(saved, dict):
            return f"expected the settings of a {name} (a dict), got {type(saved).__name__}"
        mine = self._saved_config()
        for setting, value in saved.items():
            if setting in mine and mine[setting] != value:
                return (
                    f"the state dict was saved from a {name} with {setting}={value!r}, this one "
                    f"has {setting}={mine[setting]!r}: with its weights it would compute other "
                    f"outputs; build it with {setting}={value!r} to load them"
                )
        return None

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + _KEY
        if key in state_dict:
            problem = self._saved_config_problem(state_dict[key])
            if problem is not None:
                # reported with the other errors (a weight of another shape, missing keys):
                # load_state_dict raises them together, as a RuntimeError, strict or not
                error_msgs.append(f"{key}: {problem}")
                state_dict = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if key not in state_dict and key in missing_keys:
            # a state dict written before the settings were saved: loaded as it was, unchecked
            missing_keys.remove(key)
