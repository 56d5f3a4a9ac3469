"""Helpers shared by the per-family Qlib weight converters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# torch buffers with no qjax counterpart: a converter may leave them unread.
UNCONVERTED_BUFFERS = ("num_batches_tracked",)


def take(sd: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """The float32 array at ``key``, or a clear error listing what the state dict has."""
    if key not in sd:
        raise KeyError(
            f"state_dict has no {key!r}; is this the right model or are the kwargs wrong? "
            f"keys present: {sorted(sd)[:12]}{' ...' if len(sd) > 12 else ''}"
        )
    return np.asarray(sd[key], dtype=np.float32)


def linear(sd: Mapping[str, np.ndarray], prefix: str, bias: bool = True) -> dict:
    """torch Linear ``{prefix}.weight`` [out, in] -> qjax ``Linear`` params (kernel [in, out])."""
    params = {"kernel": take(sd, f"{prefix}.weight").T.copy()}
    if bias:
        params["bias"] = take(sd, f"{prefix}.bias")
    return params


def conv1d(sd: Mapping[str, np.ndarray], prefix: str) -> dict:
    """torch Conv1d ``{prefix}.weight`` [out, in, k] -> Flax ``nn.Conv`` params (kernel [k, in, out])."""
    return {
        "kernel": take(sd, f"{prefix}.weight").transpose(2, 1, 0).copy(),
        "bias": take(sd, f"{prefix}.bias"),
    }


def batch_norm(sd: Mapping[str, np.ndarray], prefix: str) -> tuple[dict, dict]:
    """torch BatchNorm1d under ``prefix`` -> (params ``scale``/``bias``, batch_stats ``mean``/``var``)."""
    params = {"scale": take(sd, f"{prefix}.weight"), "bias": take(sd, f"{prefix}.bias")}
    stats = {"mean": take(sd, f"{prefix}.running_mean"), "var": take(sd, f"{prefix}.running_var")}
    return params, stats


def rnn(sd: Mapping[str, np.ndarray], prefix: str, num_layers: int) -> dict:
    """torch nn.GRU/nn.LSTM weights under ``prefix`` -> qjax ``layers.RNN`` params."""
    params = {}
    for layer in range(num_layers):
        params[f"kernel_ih_l{layer}"] = take(sd, f"{prefix}.weight_ih_l{layer}").T.copy()
        params[f"kernel_hh_l{layer}"] = take(sd, f"{prefix}.weight_hh_l{layer}").T.copy()
        params[f"bias_ih_l{layer}"] = take(sd, f"{prefix}.bias_ih_l{layer}")
        params[f"bias_hh_l{layer}"] = take(sd, f"{prefix}.bias_hh_l{layer}")
    return params


def check_shapes(module, variables: dict, *example_args, **example_kwargs) -> None:
    """Raise if ``variables`` do not have the shapes ``module.init`` would create."""
    expected = jax.eval_shape(
        lambda: module.init(jax.random.PRNGKey(0), *example_args, **example_kwargs)
    )
    exp_flat = dict(_flatten(jax.tree_util.tree_map(lambda s: tuple(s.shape), expected)))
    got_flat = dict(_flatten(jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), variables)))
    if exp_flat.keys() != got_flat.keys():
        missing = sorted(set(exp_flat) - set(got_flat))
        extra = sorted(set(got_flat) - set(exp_flat))
        raise ValueError(
            f"converted variables do not match the module: missing {missing}, extra {extra}"
        )
    bad = {k: (got_flat[k], exp_flat[k]) for k in exp_flat if exp_flat[k] != got_flat[k]}
    if bad:
        raise ValueError(
            "state_dict shapes do not fit the module built from these kwargs "
            f"(got, expected): {bad}; pass the kwargs the torch module was built with"
        )


def _flatten(tree, prefix=()):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (k,))
    else:
        yield "/".join(map(str, prefix)), tree


class TrackedStateDict(dict):
    """A state dict that records which keys a converter read, so leftovers can be rejected.

    Leftover weights mean the kwargs describe a smaller module than the one saved (e.g. too
    few layers), which would otherwise convert silently into a different network.
    """

    def __init__(self, sd: Mapping[str, np.ndarray]):
        super().__init__(sd)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> np.ndarray:
        self.read.add(key)
        return super().__getitem__(key)

    def check_all_used(self, ignore_suffixes: tuple[str, ...] = UNCONVERTED_BUFFERS) -> None:
        left = sorted(k for k in self if k not in self.read and not k.endswith(ignore_suffixes))
        if left:
            raise ValueError(
                f"state_dict has weights the module built from these kwargs does not use: "
                f"{left[:8]}{' ...' if len(left) > 8 else ''}; pass the kwargs the torch module "
                "was built with (e.g. num_layers, rnn_dups)"
            )


def finish_conversion(
    module,
    sd: TrackedStateDict,
    params: dict,
    *example_inputs,
    batch_stats: dict | None = None,
    ignore_suffixes: tuple[str, ...] = UNCONVERTED_BUFFERS,
) -> tuple[Any, dict]:
    """A converter's result ``(module, variables)``, after the checks every converter makes.

    Leftover weights in ``sd`` or shapes that differ from what ``module.init(*example_inputs)``
    creates both mean the kwargs describe another module than the one saved: either raises.
    ``batch_stats``, when given, becomes the variables' ``"batch_stats"`` collection.
    """
    sd.check_all_used(ignore_suffixes)
    collections = (
        {"params": params}
        if batch_stats is None
        else {"params": params, "batch_stats": batch_stats}
    )
    variables = jax.tree_util.tree_map(jnp.asarray, collections)
    check_shapes(module, variables, *example_inputs)
    return module, variables
