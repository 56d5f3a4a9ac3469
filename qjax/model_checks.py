"""Checks of a model's keyword arguments and of its input layout, before any work starts.

Qlib's wrappers accept anything and fail late (``hidden_size=0`` is a ZeroDivisionError deep in
an initialiser) or never (``dropout=1.5`` trains). These checks run when an estimator is built
(keywords) and before training (the feature layout), and raise
:class:`~qjax.errors.ConfigError` with the fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from qjax.errors import ConfigError, UnknownKeywordError
from qjax.run_config import closest

# Layer sizes, counts and step budgets: a network or a run with zero of them is meaningless.
POSITIVE_INTS = frozenset(
    {
        "d_feat",
        "fea_dim",
        "input_dim",
        "hidden_size",
        "d_model",
        "nhead",
        "num_layers",
        "n_chans",
        "kernel_size",
        "cnn_dim",
        "cnn_kernel_size",
        "rnn_dim",
        "rnn_dups",
        "rnn_layers",
        "output_dim",
        "freq_dim",
        "n_d",
        "n_a",
        "n_steps",
        "out_dim",
        "final_out_dim",
        "vbs",
        "batch_size",
        "n_epochs",
        "pretrain_n_epochs",
        "max_steps",
        "eval_steps",
        "eval_batch_size",
    }
)
NON_NEGATIVE_INTS = frozenset({"n_shared", "n_ind", "early_stop", "early_stop_rounds"})
POSITIVE_FLOATS = frozenset({"lr"})


def check_model_kwargs(
    model: str,
    qlib_class: str,
    kwargs: Mapping[str, Any],
    accepted: Iterable[str],
    documented: Sequence[str],
    extras: Sequence[str],
    defaults: Mapping[str, Any],
) -> None:
    """Unknown keywords (with the closest valid name) and out-of-range values."""
    accepted = set(accepted)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise UnknownKeywordError(
            f"{model}: unknown keyword argument(s) {unknown}{closest(unknown[0], accepted)}; "
            f"{qlib_class} accepts {sorted(documented)} (qjax adds {sorted(extras)})"
        )
    check_values(model, kwargs)
    nested = kwargs.get("pt_model_kwargs")
    if isinstance(nested, Mapping):
        check_values(f"{model} pt_model_kwargs", nested)
    merged = {**defaults, **kwargs}
    d_model, nhead = merged.get("d_model"), merged.get("nhead")
    if isinstance(d_model, int) and isinstance(nhead, int) and nhead > 0 and d_model % nhead:
        raise ConfigError(
            f"{model}: d_model={d_model} is not a multiple of nhead={nhead}; each attention head "
            "gets d_model / nhead features"
        )


def check_values(where: str, kwargs: Mapping[str, Any]) -> None:
    for name, value in kwargs.items():
        if value is None:
            continue
        if "dropout" in name:
            _check_probability(where, name, value)
        elif name in POSITIVE_INTS:
            _check_int(where, name, value, minimum=1)
        elif name in NON_NEGATIVE_INTS:
            _check_int(where, name, value, minimum=0)
        elif name in POSITIVE_FLOATS:
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{where}: {name} must be a positive number, got {value!r}")
        elif name == "layers" and isinstance(value, (list, tuple)):
            for size in value:
                _check_int(where, "layers entry", size, minimum=1)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_probability(where: str, name: str, value: Any) -> None:
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ConfigError(
            f"{where}: {name}={value!r} is not a dropout rate; use a number in [0, 1) "
            "(the fraction of units dropped while training)"
        )


def _check_int(where: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ConfigError(f"{where}: {name} must be {kind}, got {value!r}")


# -- the time layout of flat feature rows -------------------------------------------------------

_FIELD_LAG = re.compile(r"^([A-Za-z_]+?)(\d+)$")


def time_layout(names: Sequence[str]) -> tuple[int, int] | None:
    """``(n_fields, n_steps)`` when the columns are fields x lags in field-major blocks.

    Alpha360's 360 columns are CLOSE59..CLOSE0, OPEN59..OPEN0, ... (6 fields x 60 days), which
    Qlib's sequence models reshape to [d_feat, steps]; None when the names show no such layout.
    """
    blocks: list[tuple[str, list[int]]] = []
    for name in names:
        match = _FIELD_LAG.match(str(name))
        if match is None:
            return None
        field, lag = match.group(1), int(match.group(2))
        if blocks and blocks[-1][0] == field:
            blocks[-1][1].append(lag)
        else:
            blocks.append((field, [lag]))
    # Two fields at least: one numbered run of columns ("f0".."f359") is as likely a plain
    # numbering as one field's lags.
    if len(blocks) < 2 or len({field for field, _ in blocks}) != len(blocks):
        return None
    lags = blocks[0][1]
    if len(lags) < 2 or any(block_lags != lags for _, block_lags in blocks):
        return None
    return len(blocks), len(lags)


def check_feature_layout(model: str, key: str, d_feat: int, names: Sequence[str]) -> None:
    """A flat dataset's columns must reshape into [d_feat, steps] along their real time axis."""
    n_columns = len(names)
    layout = time_layout(names)
    if layout is not None:
        n_fields, n_steps = layout
        if d_feat != n_fields:
            raise ConfigError(
                f"{model}: {key}={d_feat}, but the {n_columns} feature columns are {n_fields} "
                f"fields x {n_steps} days (e.g. Alpha360: 6 x 60); any other {key} mixes fields "
                f"and days into scrambled time steps. Set {key}={n_fields}"
            )
        return
    if _alpha158_like(names) and d_feat != n_columns:
        raise ConfigError(
            f"{model}: {key}={d_feat}, but these {n_columns} columns (Alpha158-style factors) have "
            f"no time axis to split into steps; set {key}={n_columns} (one step), or use a "
            "TSDataset whose windows give the model real time steps"
        )


def _alpha158_like(names: Sequence[str]) -> bool:
    from qjax.data.features import feature_names

    return bool(names) and set(map(str, names)) <= set(feature_names("Alpha158"))


# The keyword that gives the features per time step of models that reshape a flat row.
SEQUENCE_FEATURE_KEY = {
    "lstm": "d_feat",
    "gru": "d_feat",
    "alstm": "d_feat",
    "transformer": "d_feat",
    "localformer": "d_feat",
    "sfm": "d_feat",
    "tcn": "d_feat",
    "gats": "d_feat",
    "hist": "d_feat",
    "krnn": "fea_dim",
}


def check_flat_layout(model: str, kwargs: Mapping[str, Any], names: Sequence[str]) -> None:
    """:func:`check_feature_layout` for a model on a flat dataset with columns ``names``."""
    key = SEQUENCE_FEATURE_KEY.get(model)
    if key is not None:
        check_feature_layout(model, key, kwargs[key], names)
