"""Optimiser and LR-plateau parity with torch (the optimisers Qlib's models build)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from qjax.train.config import Plateau, TrainConfig
from qjax.train.optim import make_optimizer, make_plateau


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
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    # Gradients of varied scale so that value clipping at 3 bites on some entries.
    grads = [
        {k: (rng.normal(size=s) * 4).astype(np.float32) for k, s in shapes.items()}
        for _ in range(6)
    ]
    lr = 0.05

    torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    torch_opt = cls(list(torch_params.values()), lr=lr, weight_decay=weight_decay)

    config = TrainConfig(
        lr=lr, optimizer=optimizer, weight_decay=weight_decay, clip_value=clip_value
    )
    tx = make_optimizer(config)
    jax_params = {k: jnp.asarray(v) for k, v in params.items()}
    opt_state = tx.init(jax_params)

    for grad in grads:
        for name, p in torch_params.items():
            p.grad = torch.tensor(grad[name])
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(list(torch_params.values()), clip_value)
        torch_opt.step()

        updates, opt_state = tx.update(
            {k: jnp.asarray(v) for k, v in grad.items()}, opt_state, jax_params
        )
        jax_params = optax.apply_updates(jax_params, updates)
        # Compare the displacement from the start. Optax computes Adam's bias corrections
        # 1 - 0.999**t in float32 (1e-5 relative error at t=1), torch in float64.
        for name in shapes:
            np.testing.assert_allclose(
                np.asarray(jax_params[name]) - params[name],
                torch_params[name].detach().numpy() - params[name],
                rtol=5e-5,
                atol=1e-5 * lr,
            )


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
