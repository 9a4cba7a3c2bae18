"""plmu: Legendre Memory Units in PyTorch.

The core (``legendre``, ``memory``, ``layers``) imports torch, numpy and scipy only.
"""

from plmu.legendre import decode, discretize, impulse_response, legendre_delay
from plmu.memory import LegendreMemory

__version__ = "0.1.0"

__all__ = [
    "LegendreMemory",
    "__version__",
    "decode",
    "discretize",
    "impulse_response",
    "legendre_delay",
]
