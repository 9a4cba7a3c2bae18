"""Text generation with a trained LMU language model, run as an RNN.

The prompt is scored once in parallel (``LMULanguageModel.forward`` returns every layer's
memory after it); each new character then goes through ``LMULanguageModel.step`` with the carried
state. No step ever re-reads the prefix, so the cost per character is constant.

Prompt handling (text8 alphabet, a-z and space): the letters A-Z are lower-cased; an empty
prompt or any other character (digits, punctuation, newlines, accents) is a ``ValueError`` that
names the offending characters. ``plmu.data.text8.to_text8_alphabet`` cleans arbitrary text.
"""

from __future__ import annotations

import math
import numbers
import string
from collections.abc import Iterator
from pathlib import Path

import torch

from plmu.checks import _check_positive_int, _check_real
from plmu.data.text8 import decode, encode
from plmu.models._tokens import check_token_dtype, check_token_range
from plmu.models.language_model import LMULanguageModel

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

__all__ = ["check_generation_args", "generate_from_checkpoint", "generate_text", "iter_tokens"]


def _check_length(length: object, name: str = "length") -> int:
    return _check_positive_int(length, name)


def _check_temperature(temperature: object, name: str = "temperature") -> float:
    t = _check_real(temperature, name)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {temperature}")
    return t


def _check_prompt(prompt: object, name: str = "prompt") -> torch.Tensor:
    """The token ids of ``prompt`` lower-cased; an empty or non-text8 prompt is an error."""
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a str, got {type(prompt).__name__}")
    if not prompt:
        raise ValueError(f"{name} must contain at least one character")
    # A-Z only: str.lower maps other characters into a-z (the Kelvin sign to "k") or out of
    # the prompt's characters ("\u0130" to "i\u0307"), and the error must name the prompt's own
    return encode(prompt.translate(_ASCII_LOWER), name=name)


def _check_seed(seed: object) -> int | None:
    """``None``, or an int that ``torch.Generator.manual_seed`` takes: ``[-2**63, 2**64)``."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not -(2**63) <= int(seed) < 2**64:
        raise ValueError(f"seed must lie in [-2**63, 2**64), got {seed}")
    return int(seed)


def check_generation_args(
    prompt: object, length: object, temperature: object, names: tuple[str, str, str] | None = None
) -> None:
    """Raise the ``ValueError``/``TypeError`` that generating with these arguments would raise.

    ``names`` names the three arguments in the messages (e.g. the config keys
    ``sample_prompt``, ``sample_length``, ``sample_temperature``).
    """
    prompt_name, length_name, temperature_name = names or ("prompt", "length", "temperature")
    _check_prompt(prompt, prompt_name)
    _check_length(length, length_name)
    _check_temperature(temperature, temperature_name)


@torch.no_grad()
def iter_tokens(
    model: LMULanguageModel,
    prompt: torch.Tensor,
    length: int,
    temperature: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield ``length`` token ids continuing ``prompt``, one at a time (the step form).

    Args:
        model: the language model (put in eval mode by the caller for dropout-free sampling).
        prompt: ``(prompt_len,)`` int64 token ids, ``prompt_len >= 1``.
        length: tokens to generate, ``>= 1``.
        temperature: divides the logits before sampling (ignored when ``greedy``).
        greedy: take the most likely token instead of sampling.
        generator: random source for sampling (``None``: torch's global one).
    """
    length = _check_length(length)
    temperature = _check_temperature(temperature)
    prompt = check_token_dtype(prompt, "prompt", "(prompt_len,)")
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise ValueError("prompt must be a non-empty 1-D tensor of token ids")
    # on any device: every generated token is read back below (int(token)), so this sync is
    # one more among many, not a stall the model's forward would add to training
    check_token_range(prompt, model.vocab_size, "prompt", sync_ok=True)
    device = next(model.parameters()).device
    logits, state = model(prompt.to(device).unsqueeze(0))
    logits = logits[:, -1]
    for i in range(length):
        if greedy:
            token = logits.argmax(dim=-1)
        else:
            # in float64 on the CPU, where the token is drawn (MPS has no float64); the largest
            # logit subtracted first: the tiniest temperature then gives a one-hot distribution,
            # where logits / temperature alone could overflow to inf (softmax nan)
            logits = logits.to("cpu", torch.float64)
            logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
            probs = torch.softmax(logits, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            token = token.to(device)
        yield int(token)
        if i + 1 < length:
            logits, state = model.step(token, state)


def generate_text(
    model: LMULanguageModel,
    prompt: str,
    length: int,
    temperature: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
) -> str:
    """Continue ``prompt`` by ``length`` characters; returns only the new characters.

    Raises:
        ValueError: empty ``prompt``, characters outside a-z/space after lower-casing A-Z,
            ``length < 1``, ``temperature <= 0`` or a ``seed`` outside ``[-2**63, 2**64)``.
        TypeError: a ``prompt`` that is not a str, a ``length`` or ``seed`` that is not an
            int, a ``temperature`` that is not a real number.
    """
    ids = _check_prompt(prompt)
    length = _check_length(length)
    _check_temperature(temperature)
    seed = _check_seed(seed)
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        tokens = list(iter_tokens(model, ids, length, temperature, greedy, generator))
    finally:
        model.train(was_training)
    return decode(tokens)


def generate_from_checkpoint(
    checkpoint: str | Path,
    prompt: str,
    length: int,
    temperature: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
) -> str:
    """``plmu generate``: load a language-model checkpoint and continue ``prompt``.

    Returns the new characters only. Raises ``ValueError`` for bad arguments or for a checkpoint
    of an experiment that is not a character language model.
    """
    from plmu.training.checkpoints import load_checkpoint

    # validate cheap arguments before loading anything
    check_generation_args(prompt, length, temperature)
    _check_seed(seed)
    experiment, _config, module, _dm = load_checkpoint(checkpoint)
    model = getattr(module, "net", None)
    if not isinstance(model, LMULanguageModel):
        raise ValueError(
            f"checkpoint {checkpoint} is of the {experiment.name} experiment: plmu generate "
            "takes text8 checkpoints"
        )
    return generate_text(model, prompt, length, temperature, greedy, seed)
