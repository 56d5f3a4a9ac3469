"""One process of the multi-process test (tests/train/test_distributed.py): a small fit on a
seeded synthetic panel; process 0 writes the final parameters and history to ``OUT`` (.npz).

Usage: ``python distributed_fit.py OUT SEED [--checkpoints DIR [--resume]]``, with
this folder and the repository on ``PYTHONPATH``. With ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set it joins the other processes
(:func:`qjax.train.distributed.initialize`), else it trains alone.
"""

from __future__ import annotations

import argparse
import os

import flax.linen as nn
import numpy as np


class SmallNet(nn.Module):
    """Dense -> ReLU -> Dropout -> Dense: the dropout checks that rows keep their masks."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Dense(16)(x))
        h = nn.Dropout(0.3, deterministic=not train)(h)
        return nn.Dense(1)(h)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("seed", type=int)
    parser.add_argument("--checkpoints")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--metric", default="ic")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        from qjax.train import distributed

        distributed.initialize(timeout_seconds=60)
    import jax
    from train_synthetic import panel

    from qjax.train import TrainConfig, fit

    train = panel(n_days=40, n_inst=24, n_feat=5, seed=args.seed, ragged=True)
    valid = panel(n_days=15, n_inst=24, n_feat=5, seed=args.seed + 1, ragged=True)
    config = TrainConfig(
        n_epochs=args.epochs,
        lr=3e-3,
        batch_size=64,
        early_stop=10,
        metric=args.metric,
        seed=args.seed,
    )
    result = fit(
        SmallNet(),
        train,
        valid,
        config,
        checkpoint_dir=args.checkpoints,
        resume=args.resume,
        verbose=False,
    )
    if jax.process_index() == 0:
        leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(result.variables))[0]
        arrays = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}
        history = {f"history/{name}": values for name, values in result.history.items()}
        np.savez(args.out, **arrays, **history, best_epoch=result.best_epoch)


if __name__ == "__main__":
    main()
