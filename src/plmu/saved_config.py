"""The settings that give a module's weights their meaning, saved beside them in its state dict.

A state dict holds tensors, and some settings shape none of them: a ``LegendreMemory`` saved
with ``discretizer="bilinear"`` loaded into a ``"zoh"`` one, or a ``ParallelLMU`` saved with
``hidden_activation="tanh"`` into a ``"relu"`` one, took the weights without a word and computed
other outputs with them. :class:`_SavedConfig` records those settings as the module's
``_extra_state`` entry and refuses a state dict saved with other values: ``load_state_dict``
raises its RuntimeError naming the entry and the setting (beside any other error, such as a
weight of another shape), with ``strict=False`` too, as for a weight of another shape. A state
dict without the entry (written before it was saved) loads as before, unchecked, also with
``strict=True``.

The entry is a tensor (the settings as UTF-8 JSON in a ``uint8`` vector; :func:`read_settings`
gives them back as a dict), so a state dict stays a mapping of tensors: safetensors,
``torch.load(weights_only=True)`` and ``torch.func.functional_call(model, model.state_dict(),
...)`` take it whole. It lives in ``state_dict()`` only: parameters, buffers and the forward
pass do not see it (``torch.compile``, ``torch.export`` and DDP's broadcast of parameters and
buffers are as before). An exported program's module has no such entries: load it with
``strict=False`` or without them (docs/library.md, "Saved settings").
"""

from __future__ import annotations

import json
from typing import Any

import torch

__all__ = ["read_settings"]

_KEY = "_extra_state"  # torch.nn.Module's name for it, under the module's prefix


class _SavedConfig:
    """Mixin (before :class:`torch.nn.Module` in the bases) that saves :meth:`_saved_config` in the
    state dict and checks it on loading."""

    def _saved_config(self) -> dict[str, Any]:
        """The settings that change what the module computes with given weights and that no
        weight's shape or key shows, as plain Python values."""
        raise NotImplementedError

    def get_extra_state(self) -> torch.Tensor:
        return _encode(self._saved_config())

    def set_extra_state(self, state: Any) -> None:
        problem = self._saved_config_problem(state)
        if problem is not None:
            raise ValueError(f"{_KEY}: {problem}")

    def _saved_config_problem(self, saved: Any) -> str | None:
        """What is wrong with ``saved`` (a state dict's entry): the first setting it gives
        otherwise than this module, or not a dict of settings; ``None`` if nothing. A setting
        this version does not record (saved by a later one) is ignored."""
        name = type(self).__name__
        settings = read_settings(saved)
        if settings is None:
            got = f"a {type(saved).__name__}"
            if isinstance(saved, torch.Tensor):
                got = f"a {saved.dtype} tensor of shape {tuple(saved.shape)} that is no JSON object"
            return f"expected the settings of a {name} (see plmu.saved_config), got {got}"
        mine = self._saved_config()
        setting = differing_setting(settings, mine)
        if setting is None:
            return None
        value = settings[setting]
        return (
            f"the state dict was saved from a {name} with {setting}={value!r}, this one "
            f"has {setting}={mine[setting]!r}: with its weights it would compute other "
            f"outputs; build it with {setting}={value!r} to load them"
        )

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


def differing_setting(saved: dict[str, Any], built: dict[str, Any]) -> str | None:
    """The first setting both ``saved`` and ``built`` record with other values, or ``None``. A
    setting only one of them records (a later or an earlier plmu's) is ignored."""
    for setting, value in saved.items():
        if setting in built and built[setting] != value:
            return setting
    return None


def _encode(settings: dict[str, Any]) -> torch.Tensor:
    """``settings`` as UTF-8 JSON in a ``uint8`` vector ``(bytes,)`` (keys sorted)."""
    data = json.dumps(settings, sort_keys=True).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def read_settings(entry: Any) -> dict[str, Any] | None:
    """The settings a state dict's ``_extra_state`` entry of a plmu layer records, as a dict
    (e.g. ``{"discretizer": "zoh", "memory_size": 1, "order": 256}``); ``None`` if ``entry`` is
    not such an entry.

    Args:
        entry: ``state_dict()[prefix + "_extra_state"]``: a ``uint8`` tensor ``(bytes,)`` on any
            device (or a dict of settings, returned as it is).
    """
    if isinstance(entry, dict):
        return entry
    if not isinstance(entry, torch.Tensor) or entry.dtype != torch.uint8 or entry.dim() != 1:
        return None
    try:
        value = json.loads(bytes(entry.tolist()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
