"""Qlib's ``LSTMModel`` with its recurrence run by cuDNN through ``jax.experimental.rnn``.

The benchmark GPU suite compares this module with qjax's own LSTM (a ``lax.scan`` recurrence),
both trained by qjax's engine. It keeps Qlib's network: a batch-first ``nn.LSTM`` over the
Alpha360 row read as [N, 60, 6], then ``fc_out`` on the last step. The recurrent weights live in
one flat vector in the layout ``jax.experimental.rnn`` gives cuDNN (every layer's ``W_ih`` and
``W_hh``, then every layer's ``b_ih`` and ``b_hh``; gates i, f, g, o as in torch), so Qlib's
state dict converts by concatenation (:func:`flat_weights_from_qlib`).

``jax.experimental.rnn.lstm`` lowers on CUDA only. ``reference=True`` runs the same weights
through its pure-JAX ``lstm_ref`` instead, so the conversion and the module can be checked on
a CPU.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

try:
    from jax.experimental import rnn as jax_rnn
except ImportError:  # removed from a future JAX: the suite records that and skips the item
    jax_rnn = None


class CudnnLSTM(nn.Module):
    """Qlib ``LSTMModel(d_feat, hidden_size, num_layers, dropout=0)`` on cuDNN's LSTM."""

    d_feat: int = 6
    hidden_size: int = 64
    num_layers: int = 2
    reference: bool = False  # lstm_ref (any backend) instead of the cuDNN kernel
    precision: Any = None  # e.g. "highest": no TF32 in cuDNN (for parity checks)

    @nn.compact
    def __call__(self, x, train: bool = False):
        n = x.shape[0]
        seq = x.reshape(n, self.d_feat, -1).transpose(0, 2, 1)  # feature-major row -> [N, T, F]
        sizes = (self.d_feat, self.hidden_size, self.num_layers)
        weights = self.param("weights", lambda key: jax_rnn.init_lstm_weight(key, *sizes, False))
        zeros = jnp.zeros((self.num_layers, n, self.hidden_size), seq.dtype)
        lengths = jnp.full((n,), seq.shape[1], jnp.int32)
        if self.is_initializing():  # shapes only: keeps the kernel out of (vmapped) init
            out = jnp.zeros((n, seq.shape[1], self.hidden_size), seq.dtype)
        elif self.reference:
            unpacked = jax_rnn.unpack_lstm_weights(weights, *sizes, False)
            out = jax_rnn.lstm_ref(seq, zeros, zeros, *unpacked, lengths, *sizes, 0.0, False)[0]
        else:
            out = jax_rnn.lstm(
                seq, zeros, zeros, weights, lengths, *sizes, 0.0, False, precision=self.precision
            )[0]
        return nn.Dense(1, name="fc_out")(out[:, -1, :])[:, 0]


def flat_weights_from_qlib(state: dict[str, np.ndarray], num_layers: int) -> np.ndarray:
    """Qlib ``LSTMModel`` state dict (numpy) -> the flat cuDNN weight vector."""
    order = [f"rnn.weight_{kind}_l{layer}" for layer in range(num_layers) for kind in ("ih", "hh")]
    order += [f"rnn.bias_{kind}_l{layer}" for layer in range(num_layers) for kind in ("ih", "hh")]
    return np.concatenate([np.asarray(state[key], np.float32).ravel() for key in order])


def variables_from_qlib(state: dict[str, np.ndarray], num_layers: int) -> dict:
    """Flax variables of :class:`CudnnLSTM` holding a Qlib ``LSTMModel``'s weights."""
    return {
        "params": {
            "weights": jnp.asarray(flat_weights_from_qlib(state, num_layers)),
            "fc_out": {
                "kernel": jnp.asarray(np.asarray(state["fc_out.weight"], np.float32).T),
                "bias": jnp.asarray(np.asarray(state["fc_out.bias"], np.float32)),
            },
        }
    }
