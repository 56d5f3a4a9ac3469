"""Qlib's PyTorch models in Flax (linen), one home per family.

``qjax.models.<family>`` holds the family's networks (``network.py``), its Qlib weight converter
(``qlib.py``) and its Qlib wrapper spec (``wrapper.py``), tied together by the home's ``MODELS``;
:mod:`qjax.models.registry` collects them. Every network takes the constructor argument names of
its Qlib counterpart and the same input layout; ``__call__(x, train=False)`` is the eval-mode
forward. The training engine (:mod:`qjax.train`) knows nothing about any of them.
"""

from qjax.models.registry import Model, get, names, register

__all__ = ["Model", "get", "names", "register"]
