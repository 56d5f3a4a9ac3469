"""LSTM and GRU regressors: Qlib's ``LSTMModel`` / ``GRUModel`` (``pytorch_lstm[_ts].py``,
``pytorch_gru[_ts].py``).

A multi-layer batch-first RNN, then ``fc_out = Linear(H, 1)`` on the top layer's last step.
One class serves both Qlib variants by input rank: [N, d_feat*T] feature-major Alpha360 rows
(DatasetH) or [N, T, d_feat] windows (TSDatasetH).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn

from qjax.models.layers import RNN, Linear, as_sequence


class _LastStepRegressor(nn.Module):
    """RNN over the sequence, Linear on the last hidden state; output [N].

    Qlib ends with ``.squeeze()``, which turns a batch of one into a 0-d tensor (quirk #15);
    here the output is always [N].
    """

    d_feat: int = 6
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.0
    cell: ClassVar[str]

    @nn.compact
    def __call__(self, x, train: bool = False):
        seq = as_sequence(x, self.d_feat)
        out = RNN(self.hidden_size, self.num_layers, self.dropout, cell=self.cell, name="rnn")(
            seq, train
        )
        return Linear(1, name="fc_out")(out[:, -1, :])[:, 0]


class LSTMModel(_LastStepRegressor):
    """Qlib ``LSTMModel(d_feat=6, hidden_size=64, num_layers=2, dropout=0.0)``."""

    cell: ClassVar[str] = "lstm"


class GRUModel(_LastStepRegressor):
    """Qlib ``GRUModel(d_feat=6, hidden_size=64, num_layers=2, dropout=0.0)``."""

    cell: ClassVar[str] = "gru"
