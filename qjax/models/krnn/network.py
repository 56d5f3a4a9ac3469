"""KRNN: Qlib's ``KRNNModel`` (``pytorch_krnn.py``).

Conv1d encoder over time ("same" padding for odd kernels) -> K independent multi-layer GRUs
on the same sequence, averaged -> Linear on the last step -> [N]. The K GRUs are one
``nn.vmap``-ed RNN whose parameters carry a leading K axis, so they run as one batched scan.

Input layout (Qlib quirk #5): Qlib reshapes a flat row with ``view(N, -1, fea_dim)``, i.e.
row-major, although Alpha360 rows are feature-major (CLOSE59..CLOSE0, OPEN59.., ...). Step t
then holds flat entries fea_dim*t ... fea_dim*t+fea_dim-1, mixing lags of a single field.
``layout="qlib"`` (default) reproduces that so Qlib weights and benchmark numbers carry over;
``layout="feature_major"`` reads the row as [F, T] and transposes, giving true time steps.
A 3-D input [N, T, fea_dim] is used as is under either layout.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax

from qjax.models.layers import RNN, Conv1d, Linear, as_sequence, uniform_init

LAYOUTS = ("qlib", "feature_major")


class KRNNModel(nn.Module):
    """Qlib ``KRNNModel(fea_dim, cnn_dim, cnn_kernel_size, rnn_dim, rnn_dups, rnn_layers, dropout)``.

    Qlib's torch module has no defaults; these are its ``KRNN`` estimator's. ``dropout`` acts
    between GRU layers in training only (each of the K GRUs draws its own mask). ``layout``
    is not a Qlib argument: see the module docstring.
    """

    fea_dim: int = 6
    cnn_dim: int = 64
    cnn_kernel_size: int = 3
    rnn_dim: int = 64
    rnn_dups: int = 3
    rnn_layers: int = 2
    dropout: float = 0.0
    layout: str = "qlib"

    @nn.compact
    def __call__(self, x, train: bool = False):
        seq = self._to_sequence(x)  # [N, T, fea_dim]

        k = self.cnn_kernel_size
        pad = (k - 1) // 2
        bound = 1.0 / math.sqrt(self.fea_dim * k)
        conv = Conv1d(
            self.cnn_dim,
            k,
            padding=(pad, pad),
            kernel_init=uniform_init(bound),
            bias_init=uniform_init(bound),
            name="conv",
        )
        encoded = conv(seq)  # [N, T', cnn_dim]

        dup_rnns = nn.vmap(
            RNN,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.rnn_dups,
        )
        states = dup_rnns(self.rnn_dim, self.rnn_layers, self.dropout, cell="gru", name="rnns")(
            encoded, train
        )  # [K, N, T', rnn_dim]
        last = states[:, :, -1, :].mean(axis=0)
        return Linear(1, name="out_fc")(last)[:, 0]

    def _to_sequence(self, x: jax.Array) -> jax.Array:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; use one of {LAYOUTS}")
        if x.ndim == 2 and self.layout == "qlib":
            if x.shape[1] % self.fea_dim:
                raise ValueError(
                    f"flat input has {x.shape[1]} columns, not a multiple of fea_dim={self.fea_dim}"
                )
            return x.reshape(x.shape[0], -1, self.fea_dim)
        return as_sequence(x, self.fea_dim)
