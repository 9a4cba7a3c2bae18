"""Second-order gradients of custom autograd Functions with hand-written (first-order)
backwards: :func:`create_graph_backward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def create_graph_backward(
    forward: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: Sequence[object],
    needs: Sequence[bool],
    grads: Sequence[torch.Tensor | None],
) -> tuple[torch.Tensor | None, ...]:
    """A custom Function's backward by autograd of its plain ``forward(*inputs)``.

    The hand-written backward passes are first-order: their results are computed from values
    saved in forward, which do not carry their dependence on the inputs. When the gradient is
    itself to be differentiated (``create_graph=True``: gradient penalties, Hessian-vector
    products, meta-learning) the Functions call this instead, which recomputes the forward from
    the saved inputs with plain operations and differentiates that, keeping the graph.

    Args:
        forward: the Function's computation as plain differentiable operations.
        inputs: the Function's inputs as saved (tensors keep their graph), non-tensors as is.
        needs: ``ctx.needs_input_grad``.
        grads: the incoming gradients, one per output of ``forward`` (``None`` for none).

    Returns:
        One gradient (or ``None``) per input.
    """
    with torch.enable_grad():
        outs = forward(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    wrt = [t for t, n in zip(inputs, needs) if n]
    if not pairs or not wrt:
        return tuple(None for _ in inputs)
    got = iter(
        torch.autograd.grad(
            [o for o, _ in pairs],
            wrt,
            [g for _, g in pairs],
            create_graph=True,
            allow_unused=True,
        )
    )
    return tuple(next(got) if n else None for n in needs)
