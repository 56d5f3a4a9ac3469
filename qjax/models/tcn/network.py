"""TCN: Locus-Lab temporal convolutional network, as used by Qlib's ``TCNModel``.

Port of ``qlib/contrib/model/tcn.py`` + ``pytorch_tcn.py`` / ``pytorch_tcn_ts.py``. Level l is
a residual block of two causal convolutions with dilation 2^l: torch pads both ends by
(k-1)·d and chomps the tail, which equals padding only the past, done here directly.

Layout: convolutions run channels-last ([N, T, C], XLA's native layout), so input goes through
:func:`qjax.models.layers.as_sequence`: a 2-D input is Qlib's flat feature-major vector
([N, num_input*T], reshaped [N, F, T] by Qlib's non-ts module) and a 3-D input is the [N, T, F]
window every qjax dataset yields. Qlib's ts module instead takes [N, F, T] and its ``predict``
forgets to transpose (quirk #3, silent because d_feat = step_len = 20 in the Alpha158
benchmark); qjax always feeds [N, T, F], so training and prediction agree.

Weight normalisation (``torch.nn.utils.weight_norm``, dim 0): w = g · v / ‖v‖ with the norm over
(in, k) per output channel. Qlib's N(0, 0.01) re-init of conv1/conv2 writes to the derived
``weight``, which weight_norm recomputes from g and v, so it has no effect (quirk #9); the
effective init reproduced here is torch's default Conv1d init of v with g = ‖v‖. The 1x1
``downsample`` conv is not weight-normed and does get N(0, 0.01).

Eval mode computes only what the head reads, the last step: level l's conv2 is needed only at
the steps T-1, T-1-2^(l+1), ..., so its input (and level l's conv1 and input) only every 2^l-th
step, where the dilated conv becomes an undilated one. For T=60 and 5 levels that is 115 of the
540 steps of the 128->128 convolutions; training keeps the whole sequence (dropout masks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from qjax.models.layers import (
    Dropout,
    Linear,
    as_sequence,
    causal_conv1d_tail,
    conv1d,
    uniform_init,
)


class WeightNormCausalConv(nn.Module):
    """Causal dilated Conv1d with weight normalisation on [N, T, C_in] -> [N, T, features].

    Parameters: ``weight_v`` [kernel_size, C_in, features] (torch's [out, in, k] transposed),
    ``weight_g`` [features] (torch's [out, 1, 1]) and ``bias`` [features].
    """

    features: int
    kernel_size: int
    dilation: int

    @nn.compact
    def __call__(self, x, tail: tuple[int, int] | None = None):
        """``tail=(count, stride)``: ``x`` holds every ``dilation``-th step only (ending at
        the last), and the output only ``count`` steps ``stride`` apart of that (see
        :func:`TCNModel.last_step`)."""
        in_channels = x.shape[-1]
        bound = 1.0 / math.sqrt(in_channels * self.kernel_size)
        v = self.param(
            "weight_v", uniform_init(bound), (self.kernel_size, in_channels, self.features)
        )
        # g starts at ‖v‖, so the initial effective weight is v itself (as weight_norm does).
        g = self.param("weight_g", lambda _key: jnp.sqrt(jnp.sum(v * v, axis=(0, 1))))
        bias = self.param("bias", uniform_init(bound), (self.features,))
        kernel = v * (g / jnp.sqrt(jnp.sum(v * v, axis=(0, 1))))
        if tail is not None:
            return causal_conv1d_tail(x, kernel, *tail) + bias
        y = conv1d(x, kernel, ((self.kernel_size - 1) * self.dilation, 0), self.dilation)
        return y + bias


class TemporalBlock(nn.Module):
    """Two weight-normed causal convs with ReLU + dropout, plus a (1x1-projected) residual."""

    n_outputs: int
    kernel_size: int
    dilation: int
    dropout: float

    @nn.compact
    def __call__(self, x, train: bool = False, keep: int | None = None):
        """``keep=None``: [N, T, C] -> [N, T, n_outputs]. ``keep=k``: ``x`` holds every
        ``dilation``-th step ending at the last, and only the last ``k`` of every second of
        those steps are computed and returned (the steps the next level's taps read)."""
        out = x
        for name in ("conv1", "conv2"):
            conv = WeightNormCausalConv(self.n_outputs, self.kernel_size, self.dilation, name=name)
            if keep is None:
                out = conv(out)
            else:  # conv1 at every step held, conv2 at the kept ones
                out = conv(out, (x.shape[1], 1) if name == "conv1" else (keep, 2))
            out = Dropout(self.dropout, deterministic=not train)(nn.relu(out))
        if keep is not None:
            x = x[:, x.shape[1] - 1 - 2 * (keep - 1) :: 2]
        residual = x
        if x.shape[-1] != self.n_outputs:
            residual = Linear(
                self.n_outputs, kernel_init=nn.initializers.normal(0.01), name="downsample"
            )(x)
        return nn.relu(out + residual)


class TCNModel(nn.Module):
    """Qlib ``TCNModel``: [N, num_input*T] or [N, T, num_input] -> [N] ([N, output_size] if > 1).

    ``num_channels`` lists the output channels of each level (Qlib: ``[n_chans] * num_layers``).
    Parameters: ``network_{l}/{conv1,conv2,downsample}`` and ``linear`` (C_last -> output_size).
    """

    num_input: int
    output_size: int
    num_channels: Sequence[int]
    kernel_size: int
    dropout: float

    def __post_init__(self):
        # YAML/JSON configs give a list; a tuple keeps the module hashable (usable as a static arg).
        object.__setattr__(self, "num_channels", tuple(int(c) for c in self.num_channels))
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = as_sequence(x, self.num_input)  # [N, T, F], channels-last
        steps, levels = out.shape[1], len(self.num_channels)
        for level, channels in enumerate(self.num_channels):
            block = TemporalBlock(
                channels, self.kernel_size, 2**level, self.dropout, name=f"network_{level}"
            )
            if train:
                out = block(out, train=train)
            else:  # eval: only the steps that reach the last one
                keep = 1 if level == levels - 1 else (steps - 1) // 2 ** (level + 1) + 1
                out = block(out, train=False, keep=keep)
        y = Linear(self.output_size, name="linear")(out[:, -1, :])
        return y[:, 0] if self.output_size == 1 else y
