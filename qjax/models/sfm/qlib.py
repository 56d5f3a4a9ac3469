"""Qlib ``SFM_Model`` weights -> :class:`qjax.models.sfm.SFM_Model`.

Qlib's SFM matrices are already stored [in, out] and used as ``x @ W``, so they copy as they
are; only the ``fc_out`` Linear is transposed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qjax.interop.weights import TrackedStateDict, finish_conversion, linear, take
from qjax.models.sfm.network import SFM_Model

_MATRICES = tuple(
    f"{kind}_{gate}" for kind in ("W", "U", "b") for gate in ("i", "ste", "fre", "c", "o")
)


def convert_sfm(state_dict: Mapping[str, np.ndarray], **kwargs) -> tuple[SFM_Model, dict]:
    """``SFM_Model(**kwargs)`` and its variables from a Qlib ``SFM_Model`` state dict."""
    module = SFM_Model(**kwargs)
    sd = TrackedStateDict(state_dict)
    params = {name: take(sd, name) for name in _MATRICES + ("U_a", "b_a", "W_p", "b_p")}
    params["fc_out"] = linear(sd, "fc_out")
    return finish_conversion(module, sd, params, np.zeros((2, module.d_feat), np.float32))
