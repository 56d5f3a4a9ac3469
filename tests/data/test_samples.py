"""Samples.batch: the one Batch structure, with the module's keyword inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from qjax.data.samples import (
    Batch,
    SubsetTake,
    subset,
    tabular_samples,
    take_rows,
    with_keyword_inputs,
)


def _samples(seed, n=12):
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product(
        [pd.date_range("2021-01-04", periods=n // 3, freq="B"), ["A", "B", "C"]],
        names=["datetime", "instrument"],
    )
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = rng.normal(size=n).astype(np.float32)
    return tabular_samples(x, y, index, weights=rng.uniform(0.5, 2, size=n)), x, y, rng


def test_batch_gathers_rows_and_keyword_inputs_in_one_structure(seed):
    samples, x, y, rng = _samples(seed)
    extra = rng.normal(size=(samples.size, 3)).astype(np.float32)
    with_extra = with_keyword_inputs(samples, extra=extra)
    ids = jnp.asarray(rng.integers(0, samples.size, size=5), jnp.int32)
    mask = jnp.asarray([True, True, False, True, False])

    batch = jax.jit(lambda s, i, m: s.batch(i, m, mask_input=True))(with_extra, ids, mask)
    assert isinstance(batch, Batch)
    np.testing.assert_array_equal(batch.x, x[np.asarray(ids)], err_msg=f"seed {seed}")
    np.testing.assert_array_equal(batch.y, y[np.asarray(ids)], err_msg=f"seed {seed}")
    np.testing.assert_array_equal(batch.w, np.asarray(samples.weights)[np.asarray(ids)])
    np.testing.assert_array_equal(batch.inputs["extra"], extra[np.asarray(ids)])
    np.testing.assert_array_equal(batch.inputs["mask"], mask)  # daily: the module's mask too
    np.testing.assert_array_equal(batch.mask, mask)

    plain = samples.batch(ids)  # no keyword inputs; every row real
    assert plain.inputs == {} and bool(plain.mask.all())


def test_keyword_inputs_need_a_row_per_sample_and_a_free_name(seed):
    samples, _, _, _ = _samples(seed)
    with pytest.raises(ValueError, match="concept has 3 rows for 12 samples"):
        with_keyword_inputs(samples, concept=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="'mask' is a keyword the engine passes itself"):
        with_keyword_inputs(samples, mask=np.zeros(samples.size))


def test_subset_holds_the_chosen_rows_and_padding_that_never_counts(seed):
    """A process's share (qjax.train.distributed): tabular rows cut, other layouts gathered
    through the held ids; padding rows have a NaN label and weight 0."""
    samples, x, y, rng = _samples(seed)
    extra = rng.normal(size=(samples.size, 2)).astype(np.float32)
    samples = with_keyword_inputs(samples, extra=extra)
    held = np.sort(rng.choice(samples.size, size=5, replace=False))
    part = subset(samples, held, capacity=7)
    assert part.size == 7 and part.take is take_rows
    np.testing.assert_array_equal(part.features[:5], x[held], err_msg=f"seed {seed}")
    np.testing.assert_array_equal(part.labels[:5], y[held])
    np.testing.assert_array_equal(part.inputs["extra"][:5], extra[held])
    np.testing.assert_array_equal(part.day[:5], np.asarray(samples.day)[held])
    assert np.isnan(np.asarray(part.labels[5:])).all() and not np.asarray(part.weights[5:]).any()

    def doubled(features, ids):  # a non-tabular take: reads a shared table through the ids
        return 2 * jnp.take(features["table"], ids, axis=0)

    table = samples.replace(features={"table": samples.features}, take=doubled)
    part = subset(table, held, capacity=7)
    assert isinstance(part.take, SubsetTake) and part.take == SubsetTake(doubled)
    rows = jnp.arange(5, dtype=jnp.int32)
    np.testing.assert_array_equal(part.batch(rows).x, 2 * x[held], err_msg=f"seed {seed}")
    with pytest.raises(ValueError, match="capacity"):
        subset(samples, held, capacity=4)
