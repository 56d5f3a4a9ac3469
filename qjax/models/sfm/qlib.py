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


def convert_sfm(
    sd: Mapping[str, np.ndarray],
    d_feat: int = 6,
    output_dim: int = 1,
    freq_dim: int = 10,
    hidden_size: int = 64,
    dropout_W: float = 0.0,  # noqa: N803 -- Qlib's keyword
    dropout_U: float = 0.0,  # noqa: N803 -- Qlib's keyword
):
    """Qlib ``SFM_Model(d_feat, output_dim, freq_dim, hidden_size, dropout_W, dropout_U)``."""
    module = SFM_Model(d_feat, output_dim, freq_dim, hidden_size, dropout_W, dropout_U)
    sd = TrackedStateDict(sd)
    params = {name: take(sd, name) for name in _MATRICES + ("U_a", "b_a", "W_p", "b_p")}
    params["fc_out"] = linear(sd, "fc_out")
    return finish_conversion(module, sd, params, np.zeros((2, d_feat), np.float32))
