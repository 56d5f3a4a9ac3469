"""The data side: market sources, Alpha158/Alpha360 features, processors, datasets, windows."""

from qjax.data.dataset import Dataset, TSDataset
from qjax.data.features import handler_frame, load_handler
from qjax.data.handler import DataHandler
from qjax.data.market import generate_concepts, generate_market
from qjax.data.samples import Batch, Samples, tabular_samples, with_keyword_inputs
from qjax.data.sources import load_ohlcv
from qjax.data.windows import WindowSampler

__all__ = [
    "Batch",
    "DataHandler",
    "Dataset",
    "Samples",
    "TSDataset",
    "WindowSampler",
    "generate_concepts",
    "generate_market",
    "handler_frame",
    "load_handler",
    "load_ohlcv",
    "tabular_samples",
    "with_keyword_inputs",
]
