"""GATs: a recurrent encoder followed by graph attention over one day's stocks.

Port of Qlib's ``GATModel`` (``pytorch_gats.py`` / ``pytorch_gats_ts.py``). Each stock's
sequence is encoded by a GRU/LSTM; its last hidden state attends to every stock of the same
day (self included). Qlib's score uses the FIRST half of the attention vector ``a`` for the
neighbour j and the second half for the stock i itself, after a shared linear
``transformation``; the attention then aggregates the RAW hidden states plus a residual.

Daily batches are ragged, so the engine pads every day to a fixed size and passes ``mask``
([N] bool, False on padding). Padded stocks get zero attention weight as neighbours (as if their scores
were -inf), so valid rows equal the unpadded computation; padded rows produce finite junk
that the loss must mask out.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from qjax.models.layers import RNN, Linear, as_sequence
from qjax.row_split import whole


def rnn_cell(base_model: str) -> str:
    """Qlib's ``base_model`` ("GRU"/"LSTM", exact spelling as Qlib) -> ``layers.RNN`` cell."""
    cells = {"GRU": "gru", "LSTM": "lstm"}
    if base_model not in cells:
        raise ValueError(f"unknown base_model {base_model!r}; use 'GRU' or 'LSTM' (as in Qlib)")
    return cells[base_model]


def masked_softmax(logits: jax.Array, valid: jax.Array, axis: int = -1) -> jax.Array:
    """Softmax over the entries where ``valid`` is True; invalid entries get weight 0.

    Equal to dropping the invalid entries before a plain softmax (what Qlib does with
    data-dependent shapes). A slice with no valid entry gives all-zero weights, like torch's
    softmax over an empty set followed by a matmul. Written without -inf so neither the value
    nor the gradient can become NaN.
    """
    valid = jnp.broadcast_to(valid, logits.shape)
    shift = jnp.max(jnp.where(valid, logits, jnp.finfo(logits.dtype).min), axis=axis, keepdims=True)
    shift = jax.lax.stop_gradient(shift)
    unnormalised = jnp.where(valid, jnp.exp(jnp.where(valid, logits, shift) - shift), 0.0)
    total = jnp.sum(unnormalised, axis=axis, keepdims=True)
    return unnormalised / jnp.where(total > 0, total, 1.0)


def stock_mask(mask: jax.Array | None, n_stocks: int) -> jax.Array:
    """The padding mask as [N] bool (all True when ``mask`` is None), or a clear error."""
    if mask is None:
        return jnp.ones(n_stocks, bool)
    mask = jnp.asarray(mask)
    if mask.shape != (n_stocks,):
        raise ValueError(
            f"mask must have shape [N]=({n_stocks},) (one flag per stock), got {mask.shape}"
        )
    return mask.astype(bool)


def zero_padded_rows(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Replace padded stocks' inputs by zeros so NaN padding cannot leak into gradients."""
    return jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)


class DailyStockRNN(nn.Module):
    """Fields and recurrent encoder shared by GATs and HIST (Qlib's HIST copies GATs' here).

    :meth:`encode_stocks` reads one day's stocks with the ``rnn`` (GRU or LSTM by
    ``base_model``), padded stocks zeroed first; subclasses add what follows in ``__call__``.
    """

    d_feat: int = 6
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.0
    base_model: str = "GRU"

    def encode_stocks(
        self, x: jax.Array, mask: jax.Array | None, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """(last hidden state [N, H], valid [N] bool) of x [N, d_feat*T] or [N, T, d_feat]."""
        seq = as_sequence(x, self.d_feat)
        valid = stock_mask(mask, seq.shape[0])
        seq = zero_padded_rows(seq, valid)
        settings = (self.hidden_size, self.num_layers, self.dropout)
        rnn = RNN(*settings, cell=rnn_cell(self.base_model), name="rnn")
        # Under a split day each device encodes its own stocks; the stocks are related whole.
        return whole(rnn(seq, train=train)[:, -1, :]), whole(valid)


class GATModel(DailyStockRNN):
    """Qlib ``GATModel``: input [N, d_feat*T] (feature-major) or [N, T, d_feat] -> [N].

    Parameters (torch names): ``rnn``, ``transformation`` (H->H), ``a`` [2H, 1] ~ N(0, 1),
    ``fc`` (H->H), ``fc_out`` (H->1). ``dropout`` is the RNN's inter-layer dropout.
    """

    @nn.compact
    def __call__(self, x, mask: jax.Array | None = None, train: bool = False):
        hidden_size = self.hidden_size
        hidden, valid = self.encode_stocks(x, mask, train)  # [N, H], [N]

        projected = Linear(hidden_size, name="transformation")(hidden)
        a = self.param("a", nn.initializers.normal(stddev=1.0), (2 * hidden_size, 1))
        neighbour_term = projected @ a[:hidden_size, 0]  # a[:H] scores the neighbour j
        self_term = projected @ a[hidden_size:, 0]  # a[H:] scores the stock i itself
        scores = nn.leaky_relu(self_term[:, None] + neighbour_term[None, :], negative_slope=0.01)
        attention = masked_softmax(scores, valid[None, :], axis=1)  # [N, N], rows sum to 1

        hidden = attention @ hidden + hidden
        hidden = nn.leaky_relu(Linear(hidden_size, name="fc")(hidden), negative_slope=0.01)
        return Linear(1, name="fc_out")(hidden)[:, 0]
