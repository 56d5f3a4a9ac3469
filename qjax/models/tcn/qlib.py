"""Qlib ``TCNModel`` weights -> :class:`qjax.models.tcn.TCNModel`.

Weight-normed convs map ``weight_v`` [out, in, k] -> [k, in, out] and ``weight_g`` [out, 1, 1]
-> [out]. The state dict lists each of them twice (``conv1.*`` = ``net.0.*``, ``conv2.*`` =
``net.4.*``: one module under two names); the ``conv*`` copies are read, the aliases skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from qjax.interop.weights import TrackedStateDict, finish_conversion, linear, take
from qjax.models.tcn.network import TCNModel


def _weight_norm_conv(sd: Mapping[str, np.ndarray], prefix: str) -> dict:
    return {
        "weight_v": take(sd, f"{prefix}.weight_v").transpose(2, 1, 0).copy(),
        "weight_g": take(sd, f"{prefix}.weight_g").reshape(-1),
        "bias": take(sd, f"{prefix}.bias"),
    }


def convert_tcn(
    sd: Mapping[str, np.ndarray],
    num_input: int,
    output_size: int,
    num_channels: Sequence[int],
    kernel_size: int,
    dropout: float = 0.0,
):
    """Qlib ``TCNModel(num_input, output_size, num_channels, kernel_size, dropout)`` state dict."""
    module = TCNModel(num_input, output_size, num_channels, kernel_size, dropout)
    sd = TrackedStateDict(sd)
    params = {}
    in_channels = num_input
    for level, channels in enumerate(num_channels):
        prefix = f"tcn.network.{level}"
        block = {name: _weight_norm_conv(sd, f"{prefix}.{name}") for name in ("conv1", "conv2")}
        if in_channels != channels:
            block["downsample"] = {
                "kernel": take(sd, f"{prefix}.downsample.weight")[:, :, 0].T.copy(),
                "bias": take(sd, f"{prefix}.downsample.bias"),
            }
        params[f"network_{level}"] = block
        sd.read.update(k for k in sd if k.startswith(f"{prefix}.net."))  # aliases of conv1/conv2
        in_channels = channels
    params["linear"] = linear(sd, "linear")
    return finish_conversion(module, sd, params, np.zeros((2, num_input), np.float32))
