"""ALSTM: Qlib's ``ALSTMModel`` (``pytorch_alstm.py`` / ``pytorch_alstm_ts.py``).

x [N, T, F] -> tanh(fc_in x) -> RNN -> R [N, T, H]
score_t = att_fc_out(tanh(dropout(att_fc_in R_t)))        (H -> H//2 -> 1, last without bias)
alpha = softmax_t(score); context = sum_t alpha_t R_t
y = fc_out(concat(R_T, context))                          (2H -> 1), output [N]
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from qjax.models.layers import RNN, Dropout, Linear, as_sequence


class ALSTMModel(nn.Module):
    """Qlib ``ALSTMModel(d_feat=6, hidden_size=64, num_layers=2, dropout=0.0, rnn_type="GRU")``.

    The module honours ``rnn_type`` ("GRU" or "LSTM", any case) as Qlib's torch module does.
    Qlib's ``ALSTM`` estimators never forward ``rnn_type`` to it, so a Qlib-trained "ALSTM" is
    always a GRU (quirk #7); reproducing that belongs to the estimator, not this module.
    ``dropout`` acts between RNN layers and on the attention hidden layer, in training only.
    Input [N, d_feat*T] (feature-major) or [N, T, d_feat]; output [N].
    """

    d_feat: int = 6
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.0
    rnn_type: str = "GRU"

    @nn.compact
    def __call__(self, x, train: bool = False):
        cell = self.rnn_type.lower()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"unknown rnn_type {self.rnn_type!r}; use 'GRU' or 'LSTM'")
        seq = jnp.tanh(Linear(self.hidden_size, name="fc_in")(as_sequence(x, self.d_feat)))
        states = RNN(self.hidden_size, self.num_layers, self.dropout, cell=cell, name="rnn")(
            seq, train
        )

        att_hidden = Linear(self.hidden_size // 2, name="att_fc_in")(states)
        att_hidden = Dropout(self.dropout, deterministic=not train)(att_hidden)
        scores = Linear(1, use_bias=False, name="att_fc_out")(jnp.tanh(att_hidden))  # [N, T, 1]
        weights = jax.nn.softmax(scores, axis=1)
        context = jnp.sum(states * weights, axis=1)  # [N, H]

        joined = jnp.concatenate([states[:, -1, :], context], axis=-1)
        return Linear(1, name="fc_out")(joined)[:, 0]
