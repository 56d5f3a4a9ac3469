"""Transformer and Localformer (Qlib's pytorch_transformer / pytorch_localformer): networks,
Qlib weights, wrappers."""

from qjax.models.registry import Model
from qjax.models.transformer import qlib, wrapper
from qjax.models.transformer.network import Localformer, Transformer, positional_encoding

MODELS = (
    Model("transformer", Transformer, spec=wrapper.TRANSFORMER, convert=qlib.transformer_from_qlib),
    Model("localformer", Localformer, spec=wrapper.LOCALFORMER, convert=qlib.localformer_from_qlib),
)

__all__ = ["Localformer", "MODELS", "Transformer", "positional_encoding"]
