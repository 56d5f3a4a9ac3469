"""Qlib's pretrained LSTM/GRU pickles: torch-free load + conversion reproduces torch's outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import require

from qjax.interop import from_qlib, read_torch_state_dict

pytestmark = pytest.mark.shared_data

# file -> (qjax name, Qlib module and class that produced it, d_feat, input shape)
PRETRAINED = {
    "model_lstm_csi300.pkl": ("lstm", "qlib.contrib.model.pytorch_lstm", "LSTMModel", 6, (32, 360)),
    "csi300_lstm_ts.pkl": (
        "lstm",
        "qlib.contrib.model.pytorch_lstm_ts",
        "LSTMModel",
        20,
        (32, 20, 20),
    ),
    "model_gru_csi300.pkl": ("gru", "qlib.contrib.model.pytorch_gru", "GRUModel", 6, (32, 360)),
    "csi300_gru_ts.pkl": ("gru", "qlib.contrib.model.pytorch_gru_ts", "GRUModel", 20, (32, 20, 20)),
}


def pretrained_path(shared_data, filename):
    path = shared_data / "qlib_pretrained" / filename
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def inputs(shape) -> np.ndarray:
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


def torch_reference(torch, filename, path, x) -> np.ndarray:
    """What Qlib does: build the module, load_state_dict(torch.load(...)), eval forward."""
    _, qlib_module, cls, d_feat, _ = PRETRAINED[filename]
    net = getattr(require(qlib_module), cls)(d_feat=d_feat, hidden_size=64, num_layers=2)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    with torch.no_grad():
        return net.eval()(torch.tensor(x)).numpy()


@pytest.mark.parity
@pytest.mark.parametrize("filename", list(PRETRAINED))
def test_pretrained_pickle_reproduces_torch_outputs(torch, shared_data, filename):
    path = pretrained_path(shared_data, filename)
    name, _, _, d_feat, shape = PRETRAINED[filename]
    state = read_torch_state_dict(path)
    module, variables = from_qlib(name, state, d_feat=d_feat, hidden_size=64, num_layers=2)
    x = inputs(shape)
    want = torch_reference(torch, filename, path, x)
    got = np.asarray(module.apply(variables, x))
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


# Runs in a fresh interpreter where importing torch fails, so the qjax path provably needs
# no torch: read the pickle, convert, predict; print the predictions as JSON.
_TORCH_FREE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import numpy as np
    from qjax.interop import from_qlib, read_torch_state_dict

    path, name, d_feat, shape = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    module, variables = from_qlib(name, read_torch_state_dict(path), d_feat=d_feat)
    print(json.dumps(np.asarray(module.apply(variables, x), np.float64).tolist()))
    assert "torch" not in {m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}
    """
)


@pytest.mark.parity
def test_loading_and_predicting_needs_no_torch(torch, shared_data):
    filename = "model_gru_csi300.pkl"  # the one with large weights: least forgiving
    path = pretrained_path(shared_data, filename)
    name, _, _, d_feat, shape = PRETRAINED[filename]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _TORCH_FREE_SCRIPT,
            str(path),
            name,
            str(d_feat),
            json.dumps(list(shape)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    got = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    want = torch_reference(torch, filename, path, inputs(shape))
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


def test_pretrained_pickle_with_wrong_d_feat_fails_clearly(shared_data):
    state = read_torch_state_dict(pretrained_path(shared_data, "csi300_lstm_ts.pkl"))
    with pytest.raises(ValueError, match="kernel_ih_l0"):
        from_qlib("lstm", state, d_feat=6)
    with pytest.raises(ValueError, match="shapes do not fit"):
        from_qlib("gru", state, d_feat=20)
