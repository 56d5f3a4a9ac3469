"""Qlib TabNet ``state_dict`` -> qjax :mod:`qjax.models.tabnet` variables (params and batch_stats).

* ``"tabnet"``: ``FinetuneModel`` (keys ``model.*`` for the encoder and ``fc.*``) ->
  :class:`TabNetFinetune`; kwargs are its fields (``TabnetModel``'s architecture arguments).
* ``"tabnet_encoder"``: a bare ``TabNet`` (Qlib's ``pretrain_file``) -> :class:`TabNet`.
* ``"tabnet_decoder"``: ``TabNet_Decoder`` -> :class:`TabNetDecoder`.

torch repeats each shared Linear under every FeatureTransformer that uses it
(``first_step.shared.0.fc.weight`` ...); those copies are checked against the owner
(``shared.0.weight``) and otherwise ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qjax.interop.weights import TrackedStateDict, batch_norm, finish_conversion, linear, take
from qjax.models.tabnet.network import TabNet, TabNetDecoder, TabNetFinetune


def _batch_norm(sd, prefix: str, params: dict, stats: dict, path: tuple[str, ...]) -> None:
    """torch BatchNorm1d ``prefix`` -> ``scale``/``bias`` params and ``mean``/``var`` batch_stats at ``path``."""
    bn_params, bn_stats = batch_norm(sd, prefix)
    _nested(params, path).update(bn_params)
    _nested(stats, path).update(bn_stats)


def _nested(tree: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        tree = tree.setdefault(key, {})
    return tree


def _check_shared_copy(sd, copy_prefix: str, owner: dict) -> None:
    copy = linear(sd, copy_prefix)
    if any(not np.array_equal(copy[k], owner[k]) for k in owner):
        raise ValueError(
            f"{copy_prefix} differs from the shared Linear it should alias; the state_dict is inconsistent"
        )


def _feature_transformer(sd, prefix, params, stats, path, shared: list[dict], n_ind: int) -> None:
    for i, owner in enumerate(shared):
        _check_shared_copy(sd, f"{prefix}.shared.{i}.fc", owner)
        _batch_norm(sd, f"{prefix}.shared.{i}.bn.bn", params, stats, path + (f"shared_{i}", "bn"))
    for i in range(n_ind):
        _nested(params, path + (f"independ_{i}",))["fc"] = linear(sd, f"{prefix}.independ.{i}.fc")
        _batch_norm(
            sd, f"{prefix}.independ.{i}.bn.bn", params, stats, path + (f"independ_{i}", "bn")
        )


def _shared(sd, prefix: str, n_shared: int) -> list[dict]:
    return [linear(sd, f"{prefix}shared.{i}") for i in range(n_shared)]


def encoder_variables(sd, prefix: str, encoder: TabNet) -> tuple[dict, dict]:
    """(params, batch_stats) of ``encoder`` from torch ``TabNet`` keys under ``prefix`` (e.g. ``"model."``)."""
    params: dict = {}
    stats: dict = {}
    shared = _shared(sd, prefix, encoder.n_shared)
    params.update({f"shared_{i}": p for i, p in enumerate(shared)})
    _batch_norm(sd, f"{prefix}bn", params, stats, ("bn",))
    _feature_transformer(
        sd, f"{prefix}first_step", params, stats, ("first_step",), shared, encoder.n_ind
    )
    for s in range(encoder.n_steps - 1):
        step, path = f"{prefix}steps.{s}", (f"steps_{s}",)
        _nested(params, path + ("atten_tran",))["fc"] = linear(sd, f"{step}.atten_tran.fc")
        _batch_norm(sd, f"{step}.atten_tran.bn.bn", params, stats, path + ("atten_tran", "bn"))
        _feature_transformer(
            sd, f"{step}.fea_tran", params, stats, path + ("fea_tran",), shared, encoder.n_ind
        )
    params["fc"] = linear(sd, f"{prefix}fc")
    return params, stats


def decoder_variables(sd, prefix: str, decoder: TabNetDecoder) -> tuple[dict, dict]:
    """(params, batch_stats) of ``decoder`` from torch ``TabNet_Decoder`` keys under ``prefix``."""
    params: dict = {}
    stats: dict = {}
    shared = _shared(sd, prefix, decoder.n_shared)
    params.update({f"shared_{i}": p for i, p in enumerate(shared)})
    for s in range(decoder.n_steps):
        step, path = f"{prefix}steps.{s}", (f"steps_{s}",)
        _feature_transformer(
            sd, f"{step}.fea_tran", params, stats, path + ("fea_tran",), shared, decoder.n_ind
        )
        _nested(params, path)["fc"] = linear(sd, f"{step}.fc")
    return params, stats


def _saved_encoder_dims(sd, prefix: str) -> dict:
    """n_d, n_a, n_shared, n_ind, n_steps of the torch encoder under ``prefix``, read off its keys."""

    def count(pattern: str) -> int:
        i = 0
        while f"{prefix}{pattern.format(i)}" in sd:
            i += 1
        return i

    return {
        "n_d": take(sd, f"{prefix}fc.weight").shape[1],
        "n_a": take(sd, f"{prefix}steps.0.atten_tran.fc.weight").shape[1],
        "n_shared": count("shared.{}.weight"),
        "n_ind": count("first_step.independ.{}.fc.weight"),
        "n_steps": count("steps.{}.atten_tran.fc.weight") + 1,
    }


def _check_encoder_dims(sd, prefix: str, encoder: TabNet, paper: bool) -> None:
    saved = _saved_encoder_dims(sd, prefix)
    wanted = {k: getattr(encoder, k) for k in saved}
    if saved != wanted:
        hint = (
            "with paper=False the encoder has TabnetModel's fixed dims (quirk #4), so a torch TabNet "
            "built with other n_d/n_a/n_shared/n_ind/n_steps needs paper=True"
            if not paper
            else "pass the n_d/n_a/n_shared/n_ind/n_steps the torch TabNet was built with"
        )
        raise ValueError(
            f"state_dict encoder dims {saved} differ from the module's {wanted}: {hint}"
        )


def tabnet_from_qlib(state_dict: Mapping[str, np.ndarray], **kwargs) -> tuple[TabNetFinetune, dict]:
    """``TabNetFinetune(**kwargs)`` from a Qlib ``FinetuneModel`` state dict.

    With ``paper=False`` (Qlib) the encoder has Qlib's fixed dims (n_d = n_a = 64, 2 shared, 2
    independent, 5 steps) whatever ``n_d ... n_steps`` say, exactly as ``TabnetModel`` builds it.
    """
    module = TabNetFinetune(**kwargs)
    sd = TrackedStateDict(state_dict)
    _check_encoder_dims(sd, "model.", module.encoder(), module.paper)
    enc_params, enc_stats = encoder_variables(sd, "model.", module.encoder())
    params = {"model": enc_params, "fc": linear(sd, "fc")}
    example = np.zeros((2, module.inp_dim), np.float32)
    return finish_conversion(module, sd, params, example, batch_stats={"model": enc_stats})


def tabnet_encoder_from_qlib(state_dict: Mapping[str, np.ndarray], **kwargs) -> tuple[TabNet, dict]:
    """:class:`TabNet` ``(**kwargs)`` (torch ``TabNet`` arguments) from a bare encoder state dict."""
    module = TabNet(**kwargs)
    sd = TrackedStateDict(state_dict)
    params, stats = encoder_variables(sd, "", module)
    return finish_conversion(
        module, sd, params, np.zeros((2, module.inp_dim), np.float32), batch_stats=stats
    )


def tabnet_decoder_from_qlib(
    state_dict: Mapping[str, np.ndarray], **kwargs
) -> tuple[TabNetDecoder, dict]:
    """:class:`TabNetDecoder` ``(inp_dim, out_dim, n_shared, n_ind, vbs, n_steps)`` from ``TabNet_Decoder``."""
    module = TabNetDecoder(**kwargs)
    sd = TrackedStateDict(state_dict)
    params, stats = decoder_variables(sd, "", module)
    return finish_conversion(
        module, sd, params, np.zeros((2, module.inp_dim), np.float32), batch_stats=stats
    )
