"""HIST's stock-to-concept matrix: from a DataFrame or Qlib's ``.npy`` files, one row per sample."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd


def concept_table(stock2concept: Any, stock_index: Any) -> pd.DataFrame:
    """Instruments x concepts, float32, from a DataFrame or Qlib's two ``.npy`` files."""
    if isinstance(stock2concept, pd.DataFrame):
        return stock2concept.astype(np.float32)
    if stock2concept is None:
        raise ValueError(
            "HIST needs stock2concept: a DataFrame (instruments x concepts, e.g. "
            "qjax.data.market.generate_concepts(...)) or the path of Qlib's "
            "qlib_csi300_stock2concept.npy together with stock_index"
        )
    if stock_index is None:
        raise ValueError(
            "stock2concept given as a .npy file needs stock_index (Qlib's stock index .npy)"
        )
    matrix = np.load(stock2concept)
    mapping = np.load(stock_index, allow_pickle=True).item()
    names = sorted(mapping, key=mapping.get)
    rows = [mapping[name] for name in names]
    if max(rows) >= matrix.shape[0]:
        raise ValueError(
            f"stock_index points at row {max(rows)} but stock2concept has {matrix.shape[0]} rows"
        )
    return pd.DataFrame(matrix[rows], index=[str(n).upper() for n in names]).astype(np.float32)


def concept_rows(table: pd.DataFrame, index: pd.MultiIndex) -> np.ndarray:
    """Each sample's concept row (samples indexed (datetime, instrument)); unknown stocks get 0."""
    instruments = index.get_level_values("instrument")
    known = instruments.isin(table.index)
    if not known.any():
        raise ValueError(
            "no instrument of the dataset is in stock2concept; check that the concept matrix "
            "belongs to this market (instrument names must match)"
        )
    if not known.all():
        # Qlib maps unknown stocks to row 733, a real stock; qjax gives them no concept.
        warnings.warn(
            f"{int((~known).sum())} samples belong to instruments missing from stock2concept; "
            "they get an all-zero concept row",
            stacklevel=4,
        )
    return table.reindex(instruments).fillna(0.0).to_numpy(np.float32)
