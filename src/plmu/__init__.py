"""plmu: Legendre Memory Units in PyTorch.

The core (``legendre``, ``memory``, ``layers`` and the modules they build on: ``checks``,
``precision``, ``tracing``, ``graph_constants``, ``padding``, ``higher_order``, ``saved_config``,
``spectral``, ``spectral_ops``) imports torch, numpy and scipy only.
"""

from plmu.layers import LMU, LMUCell, ParallelLMU
from plmu.legendre import decode, discretize, impulse_response, legendre_delay
from plmu.memory import LegendreMemory

__version__ = "0.1.0"

__all__ = [
    "LMU",
    "LMUCell",
    "LegendreMemory",
    "ParallelLMU",
    "__version__",
    "decode",
    "discretize",
    "impulse_response",
    "legendre_delay",
]
