"""Qlib Transformer / Localformer ``state_dict`` -> qjax :class:`Transformer` / :class:`Localformer`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qjax.interop.weights import TrackedStateDict, conv1d, finish_conversion, linear, rnn, take
from qjax.models.transformer.network import Localformer, Transformer

_SEQ_LEN = 4  # any length works for the shape check


def encoder_layer(sd: Mapping[str, np.ndarray], prefix: str) -> dict:
    """torch ``TransformerEncoderLayer`` under ``prefix`` -> qjax ``TransformerEncoderLayer`` params."""
    return {
        "self_attn": {
            "in_proj_kernel": take(sd, f"{prefix}.self_attn.in_proj_weight").T.copy(),
            "in_proj_bias": take(sd, f"{prefix}.self_attn.in_proj_bias"),
            "out_proj": linear(sd, f"{prefix}.self_attn.out_proj"),
        },
        "linear1": linear(sd, f"{prefix}.linear1"),
        "linear2": linear(sd, f"{prefix}.linear2"),
        "norm1": _layer_norm(sd, f"{prefix}.norm1"),
        "norm2": _layer_norm(sd, f"{prefix}.norm2"),
    }


def _layer_norm(sd, prefix: str) -> dict:
    return {"scale": take(sd, f"{prefix}.weight"), "bias": take(sd, f"{prefix}.bias")}


def _common(sd, num_layers: int) -> dict:
    return {
        "feature_layer": linear(sd, "feature_layer"),
        "encoder_layer": encoder_layer(sd, "encoder_layer"),
        "transformer_encoder": {
            f"layers_{i}": encoder_layer(sd, f"transformer_encoder.layers.{i}")
            for i in range(num_layers)
        },
        "decoder_layer": linear(sd, "decoder_layer"),
    }


def _checked(module, sd: TrackedStateDict, params: dict) -> tuple:
    example = np.zeros((1, _SEQ_LEN, module.d_feat), np.float32)
    return finish_conversion(
        module, sd, params, example, ignore_suffixes=("pos_encoder.pe",)
    )  # PE is recomputed


def transformer_from_qlib(sd, d_feat=6, d_model=8, nhead=4, num_layers=2, dropout=0.5):
    """Qlib ``pytorch_transformer(_ts).Transformer`` weights (the PE buffer is recomputed)."""
    module = Transformer(
        d_feat=d_feat, d_model=d_model, nhead=nhead, num_layers=num_layers, dropout=dropout
    )
    sd = TrackedStateDict(sd)
    return _checked(module, sd, _common(sd, num_layers))


def localformer_from_qlib(sd, d_feat=6, d_model=8, nhead=4, num_layers=2, dropout=0.5):
    """Qlib ``pytorch_localformer(_ts).Transformer`` weights (convs, encoder layers and GRU)."""
    module = Localformer(
        d_feat=d_feat, d_model=d_model, nhead=nhead, num_layers=num_layers, dropout=dropout
    )
    sd = TrackedStateDict(sd)
    params = _common(sd, num_layers)
    for i in range(num_layers):
        params["transformer_encoder"][f"conv_{i}"] = conv1d(sd, f"transformer_encoder.conv.{i}")
    params["rnn"] = rnn(sd, "rnn", num_layers)
    return _checked(module, sd, params)
