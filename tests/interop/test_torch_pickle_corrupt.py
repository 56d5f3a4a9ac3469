"""A truncated or bit-flipped torch checkpoint is reported as such, as qjax's CheckpointError."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from qjax.errors import CheckpointError, QjaxError
from qjax.interop import read_torch_state_dict


@pytest.fixture
def saved(torch, seed):
    generator = torch.Generator().manual_seed(seed)
    state = {"w": torch.randn(40, 30, generator=generator), "b": torch.arange(30.0)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), {k: v.numpy() for k, v in state.items()}


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.1, 100])
def test_a_truncated_checkpoint_is_called_truncated(saved, tmp_path, keep):
    blob, _ = saved
    path = tmp_path / "model.pt"
    path.write_bytes(blob[: keep if isinstance(keep, int) else int(len(blob) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupted torch checkpoint") as err:
        read_torch_state_dict(path)
    assert "re-save it with torch>=1.6" not in str(err.value)


def test_every_bit_flip_is_an_error_or_the_same_tensors(saved):
    # Flip one bit in every 5th byte: each read either fails with qjax's error or, where the
    # byte is outside the CRC-checked data (zip header padding), returns the exact tensors.
    blob, expected = saved
    outcomes = {"error": 0, "same": 0}
    for position in range(0, len(blob), 5):
        flipped = bytearray(blob)
        flipped[position] ^= 0x10
        try:
            got = read_torch_state_dict(io.BytesIO(bytes(flipped)))
        except CheckpointError as err:
            assert "corrupted" in str(err) or "not a torch" in str(err), (position, err)
            outcomes["error"] += 1
            continue
        assert got.keys() == expected.keys(), position
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"flip at {position}")
        outcomes["same"] += 1
    assert outcomes["error"] > 0


def test_a_legacy_pickle_still_gets_the_resave_advice(tmp_path):
    path = tmp_path / "legacy.pt"
    path.write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    with pytest.raises(CheckpointError, match="re-save it with torch>=1.6"):
        read_torch_state_dict(path)
    assert issubclass(CheckpointError, QjaxError) and issubclass(CheckpointError, ValueError)
