"""Building blocks with PyTorch's parameterisation and initialisation.

Shared by every model family so that Qlib weights map one-to-one onto qjax parameters:
kernels are stored [in, out] (the transpose of torch's [out, in]) and both RNN biases are
kept, so parameter counts equal torch's.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from qjax.row_split import current_mesh, map_rows


def uniform_init(bound: float):
    """U(-bound, bound), torch's default for Linear/Conv/RNN parameters."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(nn.Module):
    """``torch.nn.Linear``: y = x @ kernel + bias, weight and bias ~ U(±1/sqrt(fan_in))."""

    features: int
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer | None = None

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        bound = 1.0 / math.sqrt(fan_in)
        kernel_init = self.kernel_init or uniform_init(bound)
        kernel = self.param("kernel", kernel_init, (fan_in, self.features))
        y = jnp.dot(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", uniform_init(bound), (self.features,))
        return y


# Mask resolutions (random bits per element) Dropout tries, coarsest first, and how close the
# realised rate must be to the asked one for a resolution to be used.
_MASK_BITS = (8, 16)
_MASK_RATE_TOLERANCE = 1e-4  # relative


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> tuple[jax.Array, float]:
    """A Bernoulli(1 - ``rate``) keep mask of ``shape`` and the drop rate it realises.

    Each element reads 8 or 16 bits of a 32-bit random word, not a whole word, so the
    generator (threefry, costly elementwise work on XLA:CPU) runs 4 or 2 times less:
    dropout's masks were half the MLP's training step. 8 bits when ``rate`` is a whole
    number of 256ths (0.5, 0.25), else 16 bits when the nearest 65536th is within 1e-4 of
    ``rate`` (relative); otherwise a uniform float per element, as ``flax.linen.Dropout``.
    Words are packed along the last axis only, so a batch split over devices splits them too.
    """
    for bits in _MASK_BITS:
        levels = 2**bits
        threshold = round(rate * levels)
        realised = threshold / levels
        if 0 < threshold < levels and abs(realised - rate) <= _MASK_RATE_TOLERANCE * rate:
            per_word = 32 // bits
            lead, last = shape[:-1], (shape[-1] if shape else 1)
            words = jax.random.bits(key, (*lead, -(-last // per_word)), jnp.uint32)
            draws = jax.lax.bitcast_convert_type(words, getattr(jnp, f"uint{bits}"))
            draws = draws.reshape(*lead, -1)[..., :last].reshape(shape)
            return draws >= threshold, realised
    return jax.random.bernoulli(key, 1.0 - rate, shape), rate


class Dropout(nn.Module):
    """``torch.nn.Dropout``: zero each element with probability ``rate`` in training and scale
    the kept ones so the expectation is unchanged; masks come from :func:`keep_mask` (the
    "dropout" rng stream, as ``flax.linen.Dropout``)."""

    rate: float
    deterministic: bool = False

    @nn.compact
    def __call__(self, x):
        if self.deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep, realised = keep_mask(self.make_rng("dropout"), self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - realised), jnp.zeros_like(x))


def as_sequence(x: jax.Array, d_feat: int) -> jax.Array:
    """Bring model input to [N, T, F].

    A 2-D input is Qlib's flat feature-major vector (Alpha360: CLOSE59..CLOSE0, OPEN59.., ...),
    reshaped to [N, F, T] and transposed; a 3-D input is already a [N, T, F] window.
    """
    if x.ndim == 2:
        if x.shape[1] % d_feat:
            raise ValueError(
                f"flat input has {x.shape[1]} columns, not a multiple of d_feat={d_feat}; "
                "set d_feat to the number of features per time step (6 for Alpha360)"
            )
        return jnp.swapaxes(x.reshape(x.shape[0], d_feat, -1), 1, 2)
    if x.ndim == 3:
        if x.shape[2] != d_feat:
            raise ValueError(
                f"window input has {x.shape[2]} features per step but d_feat={d_feat}; "
                "set d_feat to the dataset's feature count"
            )
        return x
    raise ValueError(f"expected input [N, d_feat*T] or [N, T, d_feat], got shape {x.shape}")


class RNN(nn.Module):
    """Multi-layer batch-first GRU or LSTM equal to ``torch.nn.GRU``/``nn.LSTM``.

    Input [N, T, F] -> top layer's output sequence [N, T, H]. Per layer l the parameters are
    ``kernel_ih_l{l}`` [in, G*H], ``kernel_hh_l{l}`` [H, G*H], ``bias_ih_l{l}``, ``bias_hh_l{l}``
    with torch's gate blocks (GRU: r, z, n; LSTM: i, f, g, o). The input projection of all time
    steps is one matmul outside the recurrent scan; only h @ kernel_hh runs per step.

    ``per_gate`` (default: outside training) runs every gate as its own array: its own input
    projection and its own h @ kernel_hh block per step. XLA:CPU vectorises the gate math badly
    when the gates are slices of one [N, G*H] buffer; split, LSTM/GRU inference runs 1.2-1.5x
    faster (benchmarks/rnn_layouts.py). Under differentiation the split gains nothing
    measurable, so training keeps the fused layout (``per_gate=None`` picks by ``train``).
    Same numbers either way, up to rounding.

    While the engine splits a batch's rows over devices (:mod:`qjax.row_split`), each device runs
    its own rows through every layer under ``shard_map`` and the output stays split by rows. Left
    to XLA's partitioner, the backward scan all-reduced the kernel gradients at every time step.
    """

    hidden_size: int
    num_layers: int = 1
    dropout: float = 0.0
    cell: str = "gru"
    per_gate: bool | None = None

    def __call__(self, x, train: bool = False):
        if self.is_initializing() or current_mesh() is None:
            return self.layers(x, train)
        local = self.clone(parent=None, name=None)
        dropout = train and self.dropout > 0 and self.num_layers > 1

        def run(params, rows, key):
            rngs = {"dropout": key} if dropout else {}
            return local.apply({"params": params}, rows, train, rngs=rngs, method=RNN.layers)

        key = self.make_rng("dropout") if dropout else None
        return map_rows(run, self.variables["params"], x, key)

    @nn.compact
    def layers(self, x, train: bool):
        """The layers on all of ``x``'s rows (what each device runs on its own under a split)."""
        cell = self.cell.lower()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"unknown RNN cell {self.cell!r}; use 'gru' or 'lstm'")
        n_gates = 3 if cell == "gru" else 4
        hidden = self.hidden_size
        per_gate = (not train) if self.per_gate is None else self.per_gate
        init = uniform_init(1.0 / math.sqrt(hidden))
        seq = jnp.swapaxes(x, 0, 1)  # time-major [T, N, F] through all layers
        for layer in range(self.num_layers):
            in_dim = seq.shape[-1]
            k_ih = self.param(f"kernel_ih_l{layer}", init, (in_dim, n_gates * hidden))
            k_hh = self.param(f"kernel_hh_l{layer}", init, (hidden, n_gates * hidden))
            b_ih = self.param(f"bias_ih_l{layer}", init, (n_gates * hidden,))
            b_hh = self.param(f"bias_hh_l{layer}", init, (n_gates * hidden,))
            if per_gate:
                seq = _scan_gates(cell, seq, k_ih, k_hh, b_ih, b_hh, hidden)
            else:
                seq = _scan_cell(cell, jnp.dot(seq, k_ih) + b_ih, k_hh, b_hh, hidden)
            if train and self.dropout > 0 and layer < self.num_layers - 1:
                seq = Dropout(self.dropout, deterministic=False)(seq)
        return jnp.swapaxes(seq, 0, 1)


def _scan_cell(cell: str, projected, k_hh, b_hh, hidden: int, gate=jax.nn.sigmoid):
    """Run one recurrent layer over time-major pre-projected inputs [T, N, G*H]; ``gate``: the
    gates' sigmoid (``benchmarks/rnn_xla_levers.py`` times another)."""
    # zeros_like keeps the input's sharding type (varying per device under shard_map)
    h0 = jnp.zeros_like(projected[0, :, :hidden])

    if cell == "gru":

        def step(h, xp):
            hp = jnp.dot(h, k_hh) + b_hh
            x_r, x_z, x_n = jnp.split(xp, 3, axis=-1)
            h_r, h_z, h_n = jnp.split(hp, 3, axis=-1)
            r = gate(x_r + h_r)
            z = gate(x_z + h_z)
            n = jnp.tanh(x_n + r * h_n)
            h = (1.0 - z) * n + z * h
            return h, h

        _, hs = jax.lax.scan(step, h0, projected)
        return hs

    def lstm_step(carry, xp):
        h, c = carry
        gates = xp + jnp.dot(h, k_hh) + b_hh
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = gate(f) * c + gate(i) * jnp.tanh(g)
        h = gate(o) * jnp.tanh(c)
        return (h, c), h

    _, hs = jax.lax.scan(lstm_step, (h0, h0), projected)
    return hs


def _scan_gates(cell: str, seq, k_ih, k_hh, b_ih, b_hh, hidden: int, gate=jax.nn.sigmoid):
    """One recurrent layer over time-major inputs [T, N, F], every gate its own array; ``gate``
    as in :func:`_scan_cell`."""
    blocks = [slice(k * hidden, (k + 1) * hidden) for k in range(k_hh.shape[1] // hidden)]
    k_gates = [k_hh[:, block] for block in blocks]
    h0 = jnp.zeros_like(seq[0, :, :1], shape=(seq.shape[1], hidden))

    if cell == "gru":
        # r and z take both biases up front; n keeps b_hn inside r * (h @ K_n + b_hn).
        x_r, x_z, x_n = (jnp.dot(seq, k_ih[:, b]) + b_ih[b] for b in blocks)
        x_r, x_z = x_r + b_hh[blocks[0]], x_z + b_hh[blocks[1]]
        b_hn = b_hh[blocks[2]]

        def step(h, xs):
            x_r, x_z, x_n = xs
            r = gate(x_r + jnp.dot(h, k_gates[0]))
            z = gate(x_z + jnp.dot(h, k_gates[1]))
            n = jnp.tanh(x_n + r * (jnp.dot(h, k_gates[2]) + b_hn))
            h = (1.0 - z) * n + z * h
            return h, h

        _, hs = jax.lax.scan(step, h0, (x_r, x_z, x_n))
        return hs

    xs = tuple(jnp.dot(seq, k_ih[:, b]) + (b_ih[b] + b_hh[b]) for b in blocks)

    def lstm_step(carry, xs):
        h, c = carry
        i, f, g, o = (x + jnp.dot(h, k) for x, k in zip(xs, k_gates))
        c = gate(f) * c + gate(i) * jnp.tanh(g)
        h = gate(o) * jnp.tanh(c)
        return (h, c), h

    _, hs = jax.lax.scan(lstm_step, (h0, h0), xs)
    return hs


def conv1d(
    x: jax.Array, kernel: jax.Array, padding: tuple[int, int], dilation: int = 1
) -> jax.Array:
    """Conv1d over time, [N, T, C_in] x [K, C_in, C_out] -> [N, T_out, C_out], as K shifted matmuls.

    Equal to ``lax.conv_general_dilated`` (NWC/WIO, zero ``padding`` (left, right), ``rhs_dilation``)
    but differentiated as matmuls: XLA:CPU computes a convolution's kernel gradient about 70x
    slower inside ``lax.scan`` (the engine's epoch loop) than outside it; matmuls do not suffer.
    """
    taps = kernel.shape[0]
    padded = jnp.pad(x, ((0, 0), tuple(padding), (0, 0)))
    length = padded.shape[1] - (taps - 1) * dilation
    return sum(
        jnp.dot(padded[:, tap * dilation : tap * dilation + length], kernel[tap])
        for tap in range(taps)
    )


def causal_conv1d_tail(x: jax.Array, kernel: jax.Array, count: int, stride: int) -> jax.Array:
    """Causal Conv1d (zero past, dilation 1) evaluated only at ``count`` steps ``stride`` apart
    that end at the last one: [N, T, C_in] x [K, C_in, C_out] -> [N, count, C_out].

    Equal to ``conv1d(x, kernel, (K - 1, 0))[:, T - 1 - stride * (count - 1) :: stride]``
    without computing the other steps (for a model that reads only the last step).
    """
    taps, steps = kernel.shape[0], x.shape[1]
    first = steps - 1 - stride * (count - 1)
    if first < 0:
        raise ValueError(f"{count} steps {stride} apart do not fit in a sequence of {steps}")
    padded = jnp.pad(x, ((0, 0), (taps - 1, 0), (0, 0)))
    span = stride * (count - 1) + 1
    return sum(
        jnp.dot(padded[:, first + tap : first + tap + span : stride], kernel[tap])
        for tap in range(taps)
    )


class Conv1d(nn.Module):
    """Channels-last ``torch.nn.Conv1d``: params ``kernel`` [K, C_in, features] and ``bias``."""

    features: int
    kernel_size: int
    padding: tuple[int, int]
    dilation: int = 1
    kernel_init: nn.initializers.Initializer | None = None
    bias_init: nn.initializers.Initializer | None = None

    @nn.compact
    def __call__(self, x):
        bound = 1.0 / math.sqrt(x.shape[-1] * self.kernel_size)  # torch: fan_in = C_in * K
        shape = (self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init or uniform_init(bound), shape)
        bias = self.param("bias", self.bias_init or uniform_init(bound), (self.features,))
        return conv1d(x, kernel, self.padding, self.dilation) + bias
