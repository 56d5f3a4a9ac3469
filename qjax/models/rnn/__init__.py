"""LSTM and GRU (Qlib's pytorch_lstm / pytorch_gru): networks, Qlib weights, wrappers."""

from qjax.models.registry import Model
from qjax.models.rnn import qlib, wrapper
from qjax.models.rnn.network import GRUModel, LSTMModel

MODELS = (
    Model("lstm", LSTMModel, spec=wrapper.LSTM, convert=qlib.lstm_from_qlib),
    Model("gru", GRUModel, spec=wrapper.GRU, convert=qlib.gru_from_qlib),
)

__all__ = ["GRUModel", "LSTMModel", "MODELS"]
