"""Dropout's packed masks (``qjax.models.layers.keep_mask``): the rate they realise, their
independence, and torch's train/eval semantics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models.layers import Dropout, keep_mask

N = 400_000


def _within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize(
    "rate, realised",
    [
        (0.5, 0.5),  # a whole number of 256ths: 8 bits per element
        (0.7, 45875 / 65536),  # 16 bits, within 1e-4 of the rate
        (0.05, 3277 / 65536),
        (0.001, 0.001),  # too fine for 16 bits: a float per element
    ],
)
def test_masks_drop_at_the_rate_they_report(seed, rate, realised):
    keep, reported = keep_mask(jax.random.key(seed), rate, (N // 100, 100))
    assert reported == realised
    assert abs(reported - rate) <= 1e-4 * rate
    dropped = int(N - jnp.sum(keep))
    assert _within_binomial(dropped, N, reported), (dropped, N * reported, seed)


def test_neighbouring_elements_are_independent(seed):
    # neighbours share a 32-bit random word: both dropped must happen at rate^2, not rate
    keep, rate = keep_mask(jax.random.key(seed), 0.25, (N,))
    pairs = np.asarray(keep).reshape(-1, 4)
    for a, b in ((0, 1), (1, 2), (2, 3), (0, 3)):
        both = int(np.sum(~pairs[:, a] & ~pairs[:, b]))
        assert _within_binomial(both, len(pairs), rate * rate), (a, b, both, seed)


def test_an_odd_sized_mask_and_the_same_key_give_the_same_mask(seed):
    shape = (7, 13, 3)  # 273 elements: not a whole number of words
    first, _ = keep_mask(jax.random.key(seed), 0.5, shape)
    again, _ = keep_mask(jax.random.key(seed), 0.5, shape)
    other, _ = keep_mask(jax.random.key(seed + 1), 0.5, shape)
    assert first.shape == shape and first.dtype == jnp.bool_
    assert bool(jnp.all(first == again)) and not bool(jnp.all(first == other))


def test_dropout_scales_kept_values_and_keeps_the_mean(seed):
    x = jnp.asarray(np.random.default_rng(seed).uniform(1.0, 2.0, (N,)), jnp.float32)
    out = Dropout(0.05).apply({}, x, rngs={"dropout": jax.random.key(seed)})
    kept = out != 0
    scale = 1.0 / (1.0 - 3277 / 65536)
    np.testing.assert_allclose(out[kept], x[kept] * scale, rtol=1e-6)
    # E[out] = x: the sample mean is within 5 standard errors of x's
    spread = float(jnp.std(out)) / np.sqrt(N)
    assert abs(float(jnp.mean(out) - jnp.mean(x))) < 5 * spread, seed


def test_eval_rate_zero_and_rate_one(seed):
    x = jnp.arange(1.0, 11.0)
    rngs = {"dropout": jax.random.key(seed)}
    assert bool(jnp.all(Dropout(0.5, deterministic=True).apply({}, x, rngs=rngs) == x))
    assert bool(jnp.all(Dropout(0.0).apply({}, x, rngs=rngs) == x))
    assert bool(jnp.all(Dropout(1.0).apply({}, x, rngs=rngs) == 0))
