"""TabNet (Qlib's pytorch_tabnet): networks, Qlib weights, objectives, pretraining, wrapper."""

from qjax.models.registry import Model
from qjax.models.tabnet import qlib, wrapper
from qjax.models.tabnet.network import (
    SPARSE_LOSS_COLLECTION,
    TabNet,
    TabNetDecoder,
    TabNetFinetune,
    TabNetPretrainer,
)

MODELS = (
    Model("tabnet", TabNetFinetune, spec=wrapper.TABNET, convert=qlib.tabnet_from_qlib),
    # Qlib's pretrain_file holds a bare encoder; its decoder exists only inside pretraining.
    Model("tabnet_encoder", TabNet, convert=qlib.tabnet_encoder_from_qlib),
    Model("tabnet_decoder", TabNetDecoder, convert=qlib.tabnet_decoder_from_qlib),
)

__all__ = [
    "MODELS",
    "SPARSE_LOSS_COLLECTION",
    "TabNet",
    "TabNetDecoder",
    "TabNetFinetune",
    "TabNetPretrainer",
]
