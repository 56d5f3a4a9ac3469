"""A tqdm bar with one tick per evaluation (an epoch, or an ``eval_steps`` period).

The batches of an epoch run inside one compiled ``lax.scan``, so the host learns about progress
once per epoch; that is also when the bar moves and shows the epoch's scores.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm


class Progress:
    def __init__(self, total: int, done: int, verbose: bool):
        self.bar = tqdm(total=total, initial=done, disable=not verbose, unit="eval", leave=True)

    def update(
        self, metrics: dict[str, np.ndarray], stopped_before: np.ndarray, best_score: np.ndarray
    ) -> None:
        active = ~stopped_before
        postfix = {"train_loss": _mean(metrics["train_loss"], active)}
        if "valid_score" in metrics:
            postfix["valid"] = _mean(metrics["valid_score"], active)
            postfix["best"] = _mean(best_score, np.ones_like(active))
        if "train_score" in metrics:
            postfix["train"] = _mean(metrics["train_score"], active)
        if active.size > 1:
            postfix["active"] = f"{int(active.sum())}/{active.size}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _mean(values: np.ndarray, where: np.ndarray) -> str:
    return f"{np.mean(values[where]):.5f}" if where.any() else "-"
