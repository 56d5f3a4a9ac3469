"""Flax (linen) networks mirroring Qlib's PyTorch modules.

Every module takes the constructor argument names of its Qlib counterpart and the same
input layout; ``__call__(x, train=False)`` is the eval-mode forward. Networks only: training
lives in :mod:`qjax.train`.
"""

from qjax.models.registry import get, names, register

__all__ = ["get", "names", "register"]
