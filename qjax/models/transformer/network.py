"""Transformer and Localformer: Qlib's ``pytorch_transformer`` / ``pytorch_localformer`` modules.

Both embed each time step with a Linear, add the sinusoidal position encoding (a constant, not
a parameter), run post-LN encoder layers equal to ``torch.nn.TransformerEncoderLayer``
(feed-forward width 2048, ReLU, LayerNorm eps 1e-5, no mask) and read the last time step
through ``Linear(d_model, 1)``. Localformer adds a same-padded ``Conv1d(k=3)`` branch before
every encoder layer, adds the last branch again after the stack and runs a GRU before the head.

Input is Qlib's flat feature-major ``[N, d_feat*T]`` (DatasetH) or a ``[N, T, d_feat]`` window
(TSDatasetH); the output is ``[N]``.

Two Qlib quirks are reproduced because they change training results (quirk #8):

* The ``encoder_layer`` template that Qlib registers but never calls still owns parameters: they
  are in Qlib's parameter count and in its Adam optimizer, whose coupled L2 (``reg``) decays them.
  qjax creates them too (``params["encoder_layer"]``); they never affect an output.
* ``nn.TransformerEncoder`` and Localformer's conv list deep-copy one template, so every encoder
  layer (and the unused template) starts from the same weights, as do all convs. ``init`` draws
  one set of values per template and gives it to every copy.

Parameter names mirror the torch ``state_dict``: ``feature_layer``, ``encoder_layer``,
``transformer_encoder/layers_{i}`` (``self_attn/in_proj_kernel`` [d, 3d] is torch's packed
``in_proj_weight`` transposed, ``self_attn/out_proj``, ``linear1``, ``linear2``, ``norm1``,
``norm2``), Localformer's ``transformer_encoder/conv_{i}`` and ``rnn``, and ``decoder_layer``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qjax.models.layers import RNN, Conv1d, Dropout, Linear, as_sequence, uniform_init

FEEDFORWARD_DIM = 2048  # torch's TransformerEncoderLayer default, kept by Qlib even for d_model=64
LAYER_NORM_EPS = 1e-5
MAX_LEN = 1000  # rows of Qlib's precomputed position-encoding buffer


def positional_encoding(length: int, d_model: int, max_len: int = MAX_LEN) -> np.ndarray:
    """Sinusoidal encoding [length, d_model]: sin on even, cos on odd channels (float32 like torch)."""
    if d_model % 2:
        raise ValueError(f"d_model={d_model} must be even for the sinusoidal position encoding")
    if length > max_len:
        raise ValueError(
            f"sequence length {length} exceeds the position encoding's max_len={max_len}"
        )
    position = np.arange(length, dtype=np.float32)[:, None]
    div_term = np.exp(
        np.arange(0, d_model, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / d_model)
    )
    pe = np.zeros((length, d_model), np.float32)
    pe[:, 0::2] = np.sin(position * div_term)
    pe[:, 1::2] = np.cos(position * div_term)
    return pe


def _shared_init(init, key: jax.Array | None, tag: int):
    """``init`` drawn from ``fold_in(key, tag)`` instead of Flax's per-path key.

    Modules built with the same ``key`` therefore start identical, like torch's deep copies.
    """
    if key is None:
        return init

    def shared(_path_key, shape, dtype=jnp.float32):
        return init(jax.random.fold_in(key, tag), shape, dtype)

    return shared


def _torch_dense(
    features: int, fan_in: int, key, tag: int, name: str, zero_bias: bool = False
) -> nn.Dense:
    """``nn.Linear`` with torch's init (U(±1/sqrt(fan_in)); MHA's out_proj has a zero bias)."""
    bound = 1.0 / math.sqrt(fan_in)
    bias_init = nn.initializers.zeros if zero_bias else uniform_init(bound)
    return nn.Dense(
        features,
        kernel_init=_shared_init(uniform_init(bound), key, 2 * tag),
        bias_init=_shared_init(bias_init, key, 2 * tag + 1),
        name=name,
    )


class MultiHeadSelfAttention(nn.Module):
    """``torch.nn.MultiheadAttention`` used as self-attention without a mask.

    Packed input projection ``in_proj_kernel`` [d, 3d] (q | k | v column blocks, xavier-uniform,
    zero bias), scores scaled by 1/sqrt(d/nhead), dropout on the attention weights in training.
    """

    d_model: int
    nhead: int
    dropout: float = 0.0
    init_key: jax.Array | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, last_only: bool = False) -> jax.Array:
        """[N, T, d] -> [N, T, d]; ``last_only``: only the last step's query, [N, 1, d]."""
        d, heads = self.d_model, self.nhead
        if d % heads:
            raise ValueError(
                f"d_model={d} is not divisible by nhead={heads}; pick nhead dividing d_model"
            )
        xavier_bound = math.sqrt(6.0 / (d + 3 * d))
        w_in = self.param(
            "in_proj_kernel", _shared_init(uniform_init(xavier_bound), self.init_key, 0), (d, 3 * d)
        )
        b_in = self.param(
            "in_proj_bias", _shared_init(nn.initializers.zeros, self.init_key, 1), (3 * d,)
        )
        n, t, _ = x.shape
        if last_only:
            q = jnp.dot(x[:, -1:], w_in[:, :d]) + b_in[:d]
            k, v = jnp.split(jnp.dot(x, w_in[:, d:]) + b_in[d:], 2, axis=-1)
        else:
            q, k, v = jnp.split(jnp.dot(x, w_in) + b_in, 3, axis=-1)
        q = q.reshape(n, q.shape[1], heads, d // heads)
        k, v = (a.reshape(n, t, heads, d // heads) for a in (k, v))
        weights_dropout = Dropout(self.dropout) if train and self.dropout > 0 else None
        context = attention(q, k, v, weights_dropout).reshape(n, q.shape[1], d)
        return _torch_dense(d, d, self.init_key, 1, "out_proj", zero_bias=True)(context)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, weights_dropout=None) -> jax.Array:
    """softmax(q k^T / sqrt(c)) v per head: [N, Tq, heads, c], [N, T, heads, c] x 2 ->
    [N, Tq, heads, c]; ``weights_dropout`` (a callable) on the weights, as torch's.

    Without dropout and up to float32, :data:`LIBRARY_ATTENTION`: XLA:CPU predicts 12-14% faster
    through it (``benchmarks/results/attention_cpu.md``). It takes its softmax in float32, so
    float64 keeps the einsums below.
    """
    if weights_dropout is None and LIBRARY_ATTENTION is not None and jnp.finfo(q.dtype).bits <= 32:
        return LIBRARY_ATTENTION(q, k, v)
    scores = jnp.einsum("nqhc,nkhc->nhqk", q, k) / math.sqrt(q.shape[-1])
    weights = jax.nn.softmax(scores, axis=-1)
    if weights_dropout is not None:
        weights = weights_dropout(weights)
    return jnp.einsum("nhqk,nkhc->nqhc", weights, v)


# jax >= 0.4.31; None on older ones, which keep the einsums. Scales by 1/sqrt(c) by default.
LIBRARY_ATTENTION = getattr(jax.nn, "dot_product_attention", None)


class TransformerEncoderLayer(nn.Module):
    """Post-LN ``torch.nn.TransformerEncoderLayer`` (ReLU, FF 2048) on batch-first [N, T, d].

    Dropout sits where torch puts it: attention weights, after attention, between the two FF
    Linears and after the FF block.
    """

    d_model: int
    nhead: int
    dropout: float = 0.0
    dim_feedforward: int = FEEDFORWARD_DIM
    init_key: jax.Array | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, last_only: bool = False) -> jax.Array:
        """[N, T, d] -> [N, T, d]; ``last_only``: only the last step's output, [N, 1, d]."""
        d, key = self.d_model, self.init_key

        def drop(y):
            return Dropout(self.dropout, deterministic=not train)(y)

        sub = None if key is None else jax.random.fold_in(key, 0)
        attn = MultiHeadSelfAttention(d, self.nhead, self.dropout, init_key=sub, name="self_attn")(
            x, train, last_only
        )
        if last_only:
            x = x[:, -1:]
        x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, name="norm1")(
            x + drop(attn)
        )
        hidden = nn.relu(_torch_dense(self.dim_feedforward, d, key, 1, "linear1")(x))
        ff = _torch_dense(d, self.dim_feedforward, key, 2, "linear2")(drop(hidden))
        return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, name="norm2")(
            x + drop(ff)
        )


class TransformerEncoder(nn.Module):
    """``nn.TransformerEncoder``: ``num_layers`` layers, all initialised from ``init_key``, no final norm."""

    d_model: int
    nhead: int
    num_layers: int
    dropout: float = 0.0
    init_key: jax.Array | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, last_only: bool = False) -> jax.Array:
        """[N, T, d] -> [N, T, d]; ``last_only``: the last layer computes only the last step's
        output, [N, 1, d] (the only one a head that reads the last step needs)."""
        for i in range(self.num_layers):
            layer = TransformerEncoderLayer(
                self.d_model, self.nhead, self.dropout, init_key=self.init_key, name=f"layers_{i}"
            )
            x = layer(x, train, last_only and i == self.num_layers - 1)
        return x


class LocalformerEncoder(nn.Module):
    """Qlib's ``LocalformerEncoder``: X <- Layer_i(X + Conv_i(X)); returns X_L + Conv_{L-1}(X_{L-1}).

    Conv_i is ``Conv1d(d, d, 3, padding=1)`` over time (non-causal, same length).
    """

    d_model: int
    nhead: int
    num_layers: int
    dropout: float = 0.0
    layer_key: jax.Array | None = None
    conv_key: jax.Array | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bound = 1.0 / math.sqrt(
            3 * self.d_model
        )  # torch Conv1d: fan_in = in_channels * kernel_size
        local = x
        for i in range(self.num_layers):
            conv = Conv1d(
                self.d_model,
                kernel_size=3,
                padding=(1, 1),
                kernel_init=_shared_init(uniform_init(bound), self.conv_key, 0),
                bias_init=_shared_init(uniform_init(bound), self.conv_key, 1),
                name=f"conv_{i}",
            )
            local = conv(x)
            layer = TransformerEncoderLayer(
                self.d_model, self.nhead, self.dropout, init_key=self.layer_key, name=f"layers_{i}"
            )
            x = layer(x + local, train)
        return x + local


def _check_layers(num_layers: int) -> None:
    if num_layers < 1:
        raise ValueError(f"num_layers={num_layers}; the encoder needs at least one layer")


def _embed(x: jax.Array, d_feat: int, d_model: int) -> jax.Array:
    """[N, d_feat*T] or [N, T, d_feat] -> per-step Linear embedding + position encoding [N, T, d]."""
    seq = as_sequence(x, d_feat)
    h = Linear(d_model, name="feature_layer")(seq)
    return h + positional_encoding(seq.shape[1], d_model)


def _unused_template(h: jax.Array, d_model: int, nhead: int, dropout: float, key) -> None:
    """Create Qlib's never-called ``encoder_layer`` parameters (at init only; see module docstring)."""
    TransformerEncoderLayer(d_model, nhead, dropout, init_key=key, name="encoder_layer")(h)


def _init_keys(module: nn.Module) -> tuple[jax.Array | None, jax.Array | None]:
    """(encoder-layer key, conv key) during ``init``; None in ``apply`` where no init runs."""
    if not module.is_initializing():
        return None, None
    root = module.make_rng("params")
    return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)


class Transformer(nn.Module):
    """Qlib ``pytorch_transformer.Transformer`` (see module docstring). Output [N].

    The embedding, the unused template and the head are shared with :class:`Localformer`, which
    overrides only :meth:`_encode`; parameters are created in the order feature_layer,
    encoder_layer, transformer_encoder (, rnn), decoder_layer.
    """

    d_feat: int = 6
    d_model: int = 8
    nhead: int = 4
    num_layers: int = 2
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_layers(self.num_layers)
        layer_key, conv_key = _init_keys(self)
        h = _embed(x, self.d_feat, self.d_model)
        if self.is_initializing():
            _unused_template(h, self.d_model, self.nhead, self.dropout, layer_key)
        h = self._encode(h, train, layer_key, conv_key)
        return Linear(1, name="decoder_layer")(h[:, -1, :])[:, 0]

    def _encode(self, h: jax.Array, train: bool, layer_key, conv_key) -> jax.Array:
        """[N, T, d] embedded sequence -> [N, T, d]: the ``transformer_encoder`` stack."""
        del conv_key  # only Localformer's convs use it
        encoder = TransformerEncoder(
            self.d_model,
            self.nhead,
            self.num_layers,
            self.dropout,
            init_key=layer_key,
            name="transformer_encoder",
        )
        # Eval: the head reads the last step only, so the last layer computes only that step
        # (its feed-forward block is half the model's FLOPs). Training keeps every step, so
        # that dropout draws the same masks as before.
        return encoder(h, train, last_only=not train)


class Localformer(Transformer):
    """Qlib ``pytorch_localformer.Transformer``: conv-augmented encoder, then a GRU. Output [N]."""

    def _encode(self, h: jax.Array, train: bool, layer_key, conv_key) -> jax.Array:
        encoder = LocalformerEncoder(
            self.d_model,
            self.nhead,
            self.num_layers,
            self.dropout,
            layer_key=layer_key,
            conv_key=conv_key,
            name="transformer_encoder",
        )
        h = encoder(h, train)
        return RNN(self.d_model, self.num_layers, self.dropout, cell="gru", name="rnn")(h, train)
