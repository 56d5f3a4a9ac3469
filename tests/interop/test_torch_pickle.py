"""``read_torch_state_dict`` (no torch) against ``torch.load`` on real and fresh checkpoints."""

from __future__ import annotations

import collections
import io
import zipfile

import numpy as np
import pytest

from qjax.interop import read_torch_state_dict


def torch_load_numpy(torch, path) -> dict[str, np.ndarray]:
    """torch's own reading; bfloat16 widened to float32 as the reader documents."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}


def assert_same_state(got: dict, want: dict):
    assert list(got) == list(want)  # order too: it is an OrderedDict
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].shape == want[key].shape, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "filename",
    ["model_lstm_csi300.pkl", "csi300_lstm_ts.pkl", "model_gru_csi300.pkl", "csi300_gru_ts.pkl"],
)
def test_qlib_pretrained_pickles_read_like_torch_load(torch, shared_data, filename):
    path = shared_data / "qlib_pretrained" / filename
    if not path.is_file():
        pytest.skip(f"{path} not present")
    got = read_torch_state_dict(path)
    assert_same_state(got, torch_load_numpy(torch, path))
    assert all(v.dtype == np.float32 for v in got.values())


def test_fresh_checkpoints_of_many_dtypes_and_layouts(torch, tmp_path):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(5, 7, generator=gen)
    shared = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    state = collections.OrderedDict(
        float32=torch.randn(3, 4, generator=gen),
        float64=torch.randn(2, 3, generator=gen, dtype=torch.float64),
        float16=torch.randn(6, generator=gen).half(),
        bfloat16=torch.randn(2, 5, generator=gen).to(torch.bfloat16),
        int64=torch.randint(-(2**40), 2**40, (7,), generator=gen),
        int32=torch.randint(-1000, 1000, (2, 2), generator=gen, dtype=torch.int32),
        int8=torch.randint(-128, 127, (5,), generator=gen, dtype=torch.int8),
        uint8=torch.randint(0, 255, (5,), generator=gen, dtype=torch.uint8),
        bool=torch.rand(3, 3, generator=gen) > 0.5,
        transposed=base.t(),  # non-contiguous: strides (1, 7)
        strided_slice=base[1:, ::3],  # storage offset and step
        scalar=torch.tensor(2.5),  # 0-d
        int_scalar=torch.tensor(-3),
        empty=torch.zeros(0, 4),
        shared_a=shared[1],  # two views of one storage
        shared_b=shared[:, 2],
    )
    assert not state["transposed"].is_contiguous()
    path = tmp_path / "state.pt"
    torch.save(state, path)

    got = read_torch_state_dict(path)
    assert_same_state(got, torch_load_numpy(torch, path))
    assert got["scalar"].shape == () and got["bfloat16"].dtype == np.float32


def test_nn_module_state_dict_with_parameters_and_buffers(torch, tmp_path, seed):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    got = read_torch_state_dict(path)
    assert_same_state(got, torch_load_numpy(torch, path))
    assert got["1.num_batches_tracked"].dtype == np.int64


def test_reads_from_an_open_binary_file(torch, tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, path)
    with open(path, "rb") as f:
        got = read_torch_state_dict(io.BytesIO(f.read()))
    np.testing.assert_array_equal(got["w"], np.arange(6.0, dtype=np.float32).reshape(2, 3))


def test_non_zip_file_is_rejected_with_the_fix(tmp_path):
    path = tmp_path / "legacy.pkl"
    path.write_bytes(b"\x80\x02}q\x00.")  # a plain (non-zip) pickle
    with pytest.raises(ValueError, match="not a torch zip checkpoint"):
        read_torch_state_dict(path)


def test_zip_without_pickle_is_rejected(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="no data.pkl"):
        read_torch_state_dict(path)


def test_whole_modules_are_refused_rather_than_executed(torch, tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 1), path)  # pickles the class, not just tensors
    with pytest.raises(ValueError, match="state_dict"):
        read_torch_state_dict(path)
