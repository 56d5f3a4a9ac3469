"""Optimiser and LR-plateau parity with torch (the optimisers Qlib's models build)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qjax.train.config import Plateau, TrainConfig
from qjax.train.optim import make_optimizer, make_plateau
from tests.models.parity import enable_x64, float32_bound


def _torch_trajectory(torch, params, grads, optimizer, lr, weight_decay, clip_value, dtype):
    """Parameters after each step of torch's optimiser, run in ``dtype``."""
    torch_params = {k: torch.nn.Parameter(torch.tensor(v.astype(dtype))) for k, v in params.items()}
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    opt = cls(list(torch_params.values()), lr=lr, weight_decay=weight_decay)
    trajectory = []
    for grad in grads:
        for name, p in torch_params.items():
            p.grad = torch.tensor(grad[name].astype(dtype))
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(list(torch_params.values()), clip_value)
        opt.step()
        trajectory.append(
            {k: p.detach().numpy().astype(np.float64) for k, p in torch_params.items()}
        )
    return trajectory


def _optax_trajectory(params, grads, optimizer, lr, weight_decay, clip_value, dtype):
    """Parameters after each step of qjax's optimiser, run in ``dtype``."""
    config = TrainConfig(
        lr=lr, optimizer=optimizer, weight_decay=weight_decay, clip_value=clip_value
    )
    tx = make_optimizer(config)
    jax_params = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    opt_state = tx.init(jax_params)
    trajectory = []
    for grad in grads:
        grad = {k: jnp.asarray(v, dtype) for k, v in grad.items()}
        updates, opt_state = tx.update(grad, opt_state, jax_params)
        jax_params = optax.apply_updates(jax_params, updates)
        trajectory.append({k: np.asarray(v, np.float64) for k, v in jax_params.items()})
    return trajectory


def _largest_gap(a, b, slack=None) -> float:
    """The largest gap between two trajectories, less an element's ``slack`` where given."""
    gaps = [
        np.abs(x[k] - y[k]) - (0 if slack is None else slack[t][k])
        for t, (x, y) in enumerate(zip(a, b, strict=True))
        for k in x
    ]
    return max(float(np.max(g)) for g in gaps)


def _path_length(trajectory, start):
    """Per element, the distance travelled up to each step: sum of |step|."""
    lengths, total, previous = [], dict.fromkeys(start, 0.0), start
    for point in trajectory:
        total = {k: total[k] + np.abs(point[k] - previous[k]) for k in point}
        lengths.append(total)
        previous = point
    return lengths


@pytest.mark.parity
@pytest.mark.parametrize(
    "optimizer, weight_decay, clip_value",
    [
        ("adam", 0.0, 3.0),
        ("adam", 1e-2, 3.0),
        ("adam", 2e-4, None),
        ("gd", 1e-2, 3.0),
        ("gd", 0.0, None),
    ],
)
def test_optimizer_matches_torch(torch, optimizer, weight_decay, clip_value, seed):
    rng = np.random.default_rng(seed)
    shapes = {"kernel": (5, 4), "bias": (4,)}
    params = {k: rng.normal(size=s) for k, s in shapes.items()}
    # Gradients of varied scale so that value clipping at 3 bites on some entries.
    grads = [{k: rng.normal(size=s) * 4 for k, s in shapes.items()} for _ in range(6)]
    # Start from float32-representable values so that both precisions run the same problem.
    params, grads = jax.tree.map(lambda a: a.astype(np.float32).astype(np.float64), (params, grads))
    settings = (optimizer, 0.05, weight_decay, clip_value)

    # Same algorithm: in float64 the two agree to rounding.
    truth = _torch_trajectory(torch, params, grads, *settings, np.float64)
    with enable_x64(True):
        qjax64 = _optax_trajectory(params, grads, *settings, jnp.float64)
    assert _largest_gap(qjax64, truth) < 1e-12

    # Same accuracy: in float32 each rounds its own way, so neither is measured against the
    # other, both against float64. Beyond rounding, Optax forms Adam's bias corrections from
    # float32 betas (0.999 is stored as 0.99900001, so 1 - 0.999**t is off by 1.3e-5 relative;
    # the update by 6.5e-6), where torch forms them in float64: each Adam step of qjax may stray
    # by 1e-5 of its length, on top of float32_bound of torch's own rounding error.
    torch_error = _largest_gap(
        _torch_trajectory(torch, params, grads, *settings, np.float32), truth
    )
    slack = None
    if optimizer == "adam":
        slack = jax.tree.map(lambda d: 1e-5 * d, _path_length(truth, params))
    qjax32 = _optax_trajectory(params, grads, *settings, jnp.float32)
    excess = _largest_gap(qjax32, truth, slack)
    assert excess <= float32_bound(torch_error), (excess, torch_error)


@pytest.mark.parity
@pytest.mark.parametrize("cooldown", [0, 1])
def test_plateau_matches_torch_reduce_lr_on_plateau(torch, cooldown, seed):
    settings = Plateau(factor=0.5, patience=2, threshold=1e-2, min_lr=0.04, cooldown=cooldown)
    lr = 1.0
    rng = np.random.default_rng(seed + 1)
    # Improvements, near-ties inside the relative threshold, long plateaus, a NaN, hitting min_lr.
    losses = np.concatenate(
        [[1.0, 0.9, 0.895, 0.9, 0.91, 0.92, 0.5, np.nan, 0.6, 0.6], 0.4 + rng.uniform(0, 0.1, 25)]
    )

    param = torch.nn.Parameter(torch.zeros(1))
    torch_opt = torch.optim.SGD([param], lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        torch_opt,
        mode="min",
        factor=settings.factor,
        patience=settings.patience,
        threshold=settings.threshold,
        threshold_mode="rel",
        cooldown=settings.cooldown,
        min_lr=settings.min_lr,
    )
    plateau = make_plateau(settings, lr)
    update = jax.jit(lambda state, loss: plateau.update({}, state, value=loss)[1])
    state = plateau.init({})
    torch_lrs, jax_lrs = [], []
    for loss in losses:
        scheduler.step(float(loss))
        torch_lrs.append(torch_opt.param_groups[0]["lr"])
        state = update(state, jnp.float32(loss))
        jax_lrs.append(lr * float(state.scale))

    assert min(torch_lrs) == pytest.approx(settings.min_lr)  # the sequence exercises the floor
    np.testing.assert_allclose(jax_lrs, torch_lrs, rtol=1e-6)


def test_no_clip_no_decay_is_plain_sgd():
    tx = make_optimizer(TrainConfig(lr=0.1, optimizer="gd", clip_value=None))
    params = {"w": jnp.array([1.0, -2.0])}
    updates, _ = tx.update({"w": jnp.array([10.0, -0.5])}, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), [-1.0, 0.05], rtol=1e-6)
