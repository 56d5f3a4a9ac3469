"""qjax.data.processor_state: a fitted processor survives export -> JSON -> import unchanged."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from qjax.data import processors as procs
from qjax.data.handler import DataHandler
from qjax.data.processor_state import UnsavableProcessorError, export_processor, import_processor
from tests.data.test_processors import PARITY_CASES, random_frame


@pytest.mark.parametrize("name, kwargs, _", PARITY_CASES)
def test_a_restored_processor_transforms_new_rows_as_the_fitted_one(seed, name, kwargs, _):
    proc = procs.build_processor({"class": name, "kwargs": kwargs})
    proc.fit(random_frame(seed))
    settings, arrays = export_processor(proc)
    settings = json.loads(json.dumps(settings))  # what saved_run.json holds
    restored = import_processor(settings, arrays)
    # Rows the fit never saw, with a different (permuted) column order: the fitted columns and
    # statistics must follow the names, as the fitted processor does.
    unseen = random_frame(seed + 1, n_days=6)
    unseen = unseen[unseen.columns[::-1]]
    expected = proc(unseen)
    got = restored(unseen)
    pd.testing.assert_frame_equal(got, expected, check_exact=True, obj=f"{name} seed={seed}")


def test_a_norm_keeps_its_fitted_statistics_not_new_ones(seed):
    fitted = procs.RobustZScoreNorm("2020-01-01", "2020-01-08", fields_group="feature")
    fitted.fit(random_frame(seed))
    restored = import_processor(*export_processor(fitted))
    other = random_frame(seed + 7) * 10  # refitting on this would move median and scale
    refit = procs.RobustZScoreNorm("2020-01-01", "2020-01-08", fields_group="feature")
    refit.fit(other)
    assert np.array_equal(restored._shift, fitted._shift)
    assert not np.allclose(refit(other).to_numpy(), restored(other).to_numpy(), equal_nan=True)


def test_foreign_or_unfitted_processors_are_refused():
    class Mine(procs.Processor):
        def __call__(self, df):
            return df

    with pytest.raises(UnsavableProcessorError, match="not one of qjax's processors"):
        export_processor(Mine())
    with pytest.raises(UnsavableProcessorError, match="has not been fitted"):
        export_processor(procs.ZScoreNorm("2020-01-01", "2020-01-08"))


def test_a_handler_from_fitted_processors_does_not_refit(seed):
    frame = random_frame(seed)
    handler = DataHandler(
        frame,
        infer_processors=[{"class": "ZScoreNorm", "kwargs": {"fields_group": "feature"}}, "Fillna"],
        fit_start_time="2020-01-01",
        fit_end_time="2020-01-08",
    )
    # Days after the fit window only: a refit would find no rows to fit on and raise.
    later = frame.loc[pd.IndexSlice["2020-01-09":, :], :]
    inference = DataHandler.from_fitted(later, handler.infer_processors)
    expected = handler.fetch(slice("2020-01-09", None), col_set="__raw")
    pd.testing.assert_frame_equal(inference.fetch(col_set="__raw"), expected, check_exact=True)
    with pytest.raises(KeyError, match="learn"):
        inference.fetch(data_key="learn")
