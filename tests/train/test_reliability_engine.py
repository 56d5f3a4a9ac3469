"""The engine stops on a NaN/inf loss without saving it, falls back past a corrupted checkpoint,
turns Ctrl-C into :class:`qjax.errors.Interrupted`, and carries a run's time across resumes."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from train_synthetic import TinyMLP, max_abs_diff, panel

from qjax.errors import CheckpointError, Interrupted, TrainingDiverged
from qjax.train import TrainConfig, engine, fit

CONFIG = TrainConfig(n_epochs=4, lr=0.01, batch_size=40, early_stop=10)


@pytest.fixture
def data(seed):
    """Train and valid samples drawn from this test's seed (the mechanisms hold for any draw)."""
    return panel(seed=seed), panel(n_days=8, seed=seed + 1)


def steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def poison_epoch(monkeypatch, at: int, make):
    """From the ``at``-th epoch program on (1-based), ``make(metrics)`` replaces its outputs."""
    real, calls = engine._run_epoch, []

    def run(state, train, valid, *, trainer, n_steps):
        state, metrics = real(state, train, valid, trainer=trainer, n_steps=n_steps)
        calls.append(1)
        return state, (make(metrics) if len(calls) >= at else metrics)

    monkeypatch.setattr(engine, "_run_epoch", run)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, data):
    directory = tmp_path / "ckpt"
    poison_epoch(monkeypatch, 3, lambda m: {**m, "train_loss": m["train_loss"] * jnp.nan})
    with pytest.raises(
        TrainingDiverged, match=r"training loss became nan at epoch 3 \(seeds \[0\]\)"
    ) as err:
        fit(TinyMLP(), *data, CONFIG, checkpoint_dir=directory, verbose=False)
    assert err.value.epoch == 3
    assert steps(directory) == [0, 1]  # epoch 3 (step 2) was never saved
    monkeypatch.undo()

    # The kept checkpoint resumes to the result of a run that never diverged.
    resumed = fit(TinyMLP(), *data, CONFIG, checkpoint_dir=directory, resume=True, verbose=False)
    reference = fit(TinyMLP(), *data, CONFIG, verbose=False)
    assert resumed.resumed_from == 2
    assert max_abs_diff(resumed.variables, reference.variables) == 0.0


def _labelled_row(samples) -> int:
    """A row whose label counts: a row with a NaN label leaves the loss, NaN features and all."""
    return int(np.flatnonzero(np.isfinite(np.asarray(samples.labels)))[0])


def test_nan_features_and_inf_labels_stop_at_the_first_epoch(data):
    train, valid = data
    row = _labelled_row(train)
    nan_x = train.replace(features=train.features.at[row, 2].set(jnp.nan))
    with pytest.raises(TrainingDiverged, match="training loss became nan at epoch 1"):
        fit(TinyMLP(), nan_x, valid, CONFIG, verbose=False)
    inf_y = train.replace(labels=train.labels.at[row].set(jnp.inf))
    with pytest.raises(TrainingDiverged, match=r"loss became (inf|nan) at epoch 1"):
        fit(TinyMLP(), inf_y, valid, CONFIG, verbose=False)
    # NaN in the validation features leaves the parameters finite: no error, as in Qlib, and
    # the valid score reads NaN (never an improvement; fit warns about that at the end).
    nan_valid = valid.replace(features=valid.features.at[_labelled_row(valid), 0].set(jnp.nan))
    with pytest.warns(UserWarning, match="validation score never improved"):
        result = fit(TinyMLP(), train, nan_valid, CONFIG, verbose=False)
    assert result.best_epoch.tolist() == [-1]


def test_a_stopped_replica_reading_nan_is_not_divergence(data):
    """Stopped replicas report NaN metrics by design. early_stop=1 stops seeds at different
    epochs on most draws, though all four stopped together on one: up to five sets of seeds
    are tried until one replica stops while another goes on, and no run may raise."""
    config = TrainConfig(n_epochs=40, lr=0.05, batch_size=40, early_stop=1)
    for first in range(0, 20, 4):
        result = fit(TinyMLP(), *data, config, seeds=range(first, first + 4), verbose=False)
        if (result.epochs_run < len(result.history["train_loss"])).any():
            return
    pytest.fail(
        f"every replica stopped at the same epoch in five sets of seeds: {result.epochs_run}"
    )


def _checkpointed_run(directory: Path, data):
    return fit(TinyMLP(), *data, CONFIG, checkpoint_dir=directory, verbose=False)


def _garble(path: Path) -> None:
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        file.write_bytes(b"\x00garbage" * 3)


def test_a_corrupted_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, data):
    directory = tmp_path / "ckpt"
    reference = _checkpointed_run(directory, data)
    assert steps(directory) == [2, 3]
    _garble(directory / "3" / "state")
    message = r"skipped unreadable checkpoint\(s\) .*ckpt/3/state/_METADATA .*epoch 3"
    with pytest.warns(UserWarning, match=message):
        resumed = fit(
            TinyMLP(), *data, CONFIG, checkpoint_dir=directory, resume=True, verbose=False
        )
    assert resumed.resumed_from == 3  # restored step 2 (3 epochs done), replayed epoch 4
    assert max_abs_diff(resumed.variables, reference.variables) == 0.0
    assert (directory / "corrupt-3").is_dir() and steps(directory) == [2, 3]


def test_each_checkpoint_holds_the_history_of_its_own_epochs(tmp_path, data):
    """Orbax writes a checkpoint's JSON in the background while training goes on: each saved
    history must stop at its own epoch (it once held the next epoch's entries, and a resume
    from it skipped an epoch)."""
    directory = tmp_path / "ckpt"
    _checkpointed_run(directory, data)
    for step in steps(directory):
        history = json.loads((directory / str(step) / "meta" / "metadata").read_text())["history"]
        assert {name: len(values) for name, values in history.items()} == dict.fromkeys(
            history, step + 1
        ), step


def test_truncated_metadata_of_the_only_checkpoint_names_the_file(tmp_path, data):
    directory = tmp_path / "ckpt"
    _checkpointed_run(directory, data)
    for step in steps(directory)[:-1]:
        import shutil

        shutil.rmtree(directory / str(step))
    meta = directory / "3" / "meta" / "metadata"
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(
        CheckpointError, match=r"no checkpoint in .*ckpt can be read: .*ckpt/3/meta/metadata "
    ):
        fit(TinyMLP(), *data, CONFIG, checkpoint_dir=directory, resume=True, verbose=False)


def test_ctrl_c_becomes_interrupted_with_the_epoch_and_the_run_resumes(
    tmp_path, monkeypatch, capsys, data
):
    directory = tmp_path / "ckpt"

    def interrupt(metrics):
        raise KeyboardInterrupt

    poison_epoch(monkeypatch, 3, interrupt)
    with pytest.raises(Interrupted) as stop:
        fit(TinyMLP(), *data, CONFIG, checkpoint_dir=directory, verbose=False)
    assert stop.value.epoch == 3 and stop.value.resumable
    assert isinstance(stop.value, KeyboardInterrupt)  # code that catches Ctrl-C still does
    monkeypatch.undo()

    resumed = fit(TinyMLP(), *data, CONFIG, checkpoint_dir=directory, resume=True)
    assert "resuming from epoch 3 (2 of 4 done)" in capsys.readouterr().err
    # The first part's time (until its last checkpoint) is carried over.
    assert resumed.earlier_seconds > 0


def test_early_stopping_is_announced_with_the_epoch(capsys, data):
    config = TrainConfig(n_epochs=30, lr=0.05, batch_size=40, early_stop=2)
    result = fit(TinyMLP(), *data, config)
    stopped_at = int(result.epochs_run[0])
    assert result.early_stopped[0] and stopped_at < 30
    err = capsys.readouterr().err
    assert f"early-stopped at epoch {stopped_at} (best epoch {result.best_epoch[0] + 1})" in err
    # the replica stops `early_stop` epochs after its best one
    assert stopped_at == result.best_epoch[0] + 1 + 2
    assert len(result.history["train_loss"]) == stopped_at  # the loop ended with the replica
