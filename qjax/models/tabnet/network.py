"""TabNet: Qlib's ``pytorch_tabnet`` encoder, pretraining decoder and fine-tuning head.

Modules (parameter names mirror the torch ``state_dict``):

* :class:`TabNetFinetune`, registered as ``"tabnet"``: Qlib's ``FinetuneModel``,
  ``fc(encoder(x, priors)[0])`` -> [N] (or [N, final_out_dim] when that is > 1). Its fields are
  ``TabnetModel``'s architecture arguments; ``params["model"]`` is the encoder and
  ``params["fc"]`` the head.
* :class:`TabNet`: the encoder, ``(x [N, inp_dim], priors) -> (vec [N, out_dim], sparse_loss)``.
* :class:`TabNetDecoder`: Qlib's ``TabNet_Decoder`` used in self-supervised pretraining, and
  :class:`TabNetPretrainer`, encoder and decoder together as pretraining runs them.
* Blocks: :class:`GhostBatchNorm`, :class:`GLU`, :class:`FeatureTransformer`,
  :class:`AttentionTransformer`, :class:`DecisionStep`, :class:`DecoderStep` and :func:`sparsemax`.

Batch norm follows torch (momentum 0.01, eps 1e-5, running variance updated with the unbiased
batch variance). Ghost batches are ``torch.chunk(x, N // vbs)``: chunks of ceil(N / (N // vbs))
rows, the last one smaller, each normalised by its own statistics and each updating the running
statistics in turn. The running statistics live in the ``"batch_stats"`` collection.

Qlib's bugs (QLIB_REFERENCE quirk #4) are reproduced by default (``paper=False``):

* ``TabnetModel`` builds its encoder without ``n_d, n_a, n_shared, n_ind, n_steps``, so the encoder
  always has n_d = n_a = 64, n_shared = n_ind = 2 and 5 steps; the fields only shape the decoder.
* The relaxation ``relax`` has no effect: every decision step sees the same ``priors``.
* The sparsity (entropy) loss is computed but never used, and the head ``fc`` is never trained
  (it is not in Qlib's optimizer): :meth:`TabNetFinetune.frozen_param_names` names it so the
  training engine can mask its updates.

``paper=True`` gives the TabNet paper's semantics: the encoder honours every field, priors are
updated after each decision step as ``P <- P * (relax - M)``, the sparsity loss is normalised as in
the paper (sum over features, mean over rows and decision steps; the engine adds
``lambda_sparse *`` it) and the head is trained. In both modes the number of decision steps is
``n_steps - 1`` (Qlib counts the initial feature transformer as a step).

The sparsity loss (Qlib's formula, or the paper's with ``paper=True``) is sown into the
``"losses"`` collection as ``"sparse_loss"``: apply with ``mutable=["batch_stats", "losses"]`` to
read it; it costs nothing otherwise.

Pretraining as Qlib does it: :func:`pretrain_mask` draws S ~ Bernoulli(ps) (from a JAX key, so
not torch's draws) and :func:`pretrain_loss` evaluates :class:`TabNetPretrainer`'s
``decoder(encoder(x*(1-S), priors=1-S)[0])`` against ``x*S`` with :func:`reconstruction_loss`.
An engine objective is ``S = pretrain_mask(rng, x.shape, ps)``, ``loss, stats =
pretrain_loss(apply_fn, variables, x, S, train)`` with count 1.

Qlib asserts the input has no NaN; that cannot be checked inside ``jit``, so NaNs propagate here
and the data side must fill them, as ``qjax.estimator("tabnet")`` does (Qlib's NaN handling).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from qjax.models.layers import Linear

BN_MOMENTUM = 0.01  # torch convention: running <- (1 - m) * running + m * batch
BN_EPS = 1e-5
RESIDUAL_SCALE = math.sqrt(0.5)
ENTROPY_EPS = 1e-10
# What TabnetModel's encoder always gets, whatever the wrapper's arguments say (quirk #4).
QLIB_ENCODER_DIMS = {"n_d": 64, "n_a": 64, "n_shared": 2, "n_ind": 2, "n_steps": 5}
SPARSE_LOSS_COLLECTION = "losses"

# Bisection halves [-1, 0] (the threshold's range after subtracting the row max) this often:
# 2^-24 is float32's resolution at |tau| ~ 1, after which the exact threshold is recomputed from
# the support, so the result equals the sort-based threshold (see tests).
BISECTION_STEPS = 24


# --------------------------------------------------------------------------------------------
# sparsemax


def _threshold_by_sort(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(tau, support size) by sorting: k = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}."""
    ordered = -jnp.sort(-z, axis=-1)
    cumsum_minus_one = jnp.cumsum(ordered, axis=-1) - 1.0
    rank = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    size = jnp.sum(rank * ordered > cumsum_minus_one, axis=-1, keepdims=True)
    tau = jnp.take_along_axis(cumsum_minus_one, size - 1, axis=-1) / size.astype(z.dtype)
    return tau, size.astype(z.dtype)


def _threshold_by_bisection(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(tau, support size) without sorting.

    With max(z) = 0 the threshold solves sum(max(z - tau, 0)) = 1 on [-1, 0). Bisection keeps a
    lower bound ``lo`` (mass >= 1); the support is then {z > lo} and tau follows exactly from it:
    tau = (sum of the support - 1) / |support|.
    """
    lo = jnp.full(z.shape[:-1] + (1,), -1.0, z.dtype)
    hi = jnp.zeros_like(lo)

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        enough_mass = jnp.sum(jnp.maximum(z - mid, 0.0), axis=-1, keepdims=True) >= 1.0
        return jnp.where(enough_mass, mid, lo), jnp.where(enough_mass, hi, mid)

    lo, _ = jax.lax.fori_loop(0, BISECTION_STEPS, halve, (lo, hi))
    return _threshold_on_support(z, z > lo)


def _threshold_on_support(z: jax.Array, support: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(tau, |support|) with tau = (sum of z over the support - 1) / |support|."""
    size = jnp.sum(support, axis=-1, keepdims=True).astype(z.dtype)
    return (jnp.sum(jnp.where(support, z, 0.0), axis=-1, keepdims=True) - 1.0) / size, size


def _threshold_by_newton(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(tau, support size) by Newton's method on sum(max(z - tau, 0)) = 1 (Michelot's algorithm).

    From tau = -1 (mass >= 1 there, as max(z) = 0) each step takes tau from the current support,
    tau = (sum of the support - 1) / |support|, and keeps only the entries above it. The function
    is convex and decreasing, so tau rises to the root without passing it and the support only
    shrinks; once it stops changing, tau is exact. 6-7 steps on the benchmark's rows
    (``benchmarks/tabnet_levers_cpu.py``), against bisection's 24 passes.
    """

    def step(carry):
        support, tau, size, _ = carry
        support = support & (z > tau)  # shrinks at every step that changes it: ends in F steps
        tau, new_size = _threshold_on_support(z, support)
        return support, tau, new_size, jnp.any(new_size != size)

    support = z > -1.0
    tau, size = _threshold_on_support(z, support)
    _, tau, size, _ = jax.lax.while_loop(
        lambda carry: carry[3], step, (support, tau, size, jnp.array(True))
    )
    return tau, size


_THRESHOLDS = {
    "sort": _threshold_by_sort,
    "bisect": _threshold_by_bisection,
    "newton": _threshold_by_newton,
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sparsemax(x: jax.Array, method: str = "newton") -> jax.Array:
    """Sparsemax over the last axis: the Euclidean projection of ``x`` onto the simplex.

    ``method`` picks how the threshold is found: ``"newton"`` (default), ``"bisect"`` or
    ``"sort"`` (Qlib's algorithm). All give the same output; on 2 CPU cores, forward+backward on
    [4096, 158] took 9.2 ms by Newton steps, 10.5 ms by bisection and 106 ms by sorting, and on
    [4096, 360] Newton and bisection were even (``benchmarks/results/tabnet_levers_cpu.md``).
    The gradient is the exact one Qlib's ``SparsemaxFunction`` defines: g on the support minus
    its mean there.
    """
    return _sparsemax_forward(x, method)[0]


def _sparsemax_forward(x: jax.Array, method: str):
    if method not in _THRESHOLDS:
        raise ValueError(f"unknown sparsemax method {method!r}; use 'newton', 'bisect' or 'sort'")
    z = x - jnp.max(x, axis=-1, keepdims=True)  # shift-invariant; bounds tau to [-1, 0)
    tau, size = _THRESHOLDS[method](z)
    out = jnp.maximum(z - tau, 0.0)
    return out, (out, size)


def _sparsemax_backward(method: str, residuals, g: jax.Array):
    del method
    out, size = residuals
    on_support = out > 0
    g_support = jnp.where(on_support, g, 0.0)
    mean_on_support = jnp.sum(g_support, axis=-1, keepdims=True) / size
    return (jnp.where(on_support, g - mean_on_support, 0.0),)


sparsemax.defvjp(_sparsemax_forward, _sparsemax_backward)


# --------------------------------------------------------------------------------------------
# building blocks


def ghost_batch_sizes(n: int, vbs: int | None) -> tuple[int, ...]:
    """Row counts of ``torch.chunk(x, n // vbs)``; one batch when ``vbs`` is None or n <= vbs."""
    if vbs is None or n <= vbs:
        return (n,)
    size = -(-n // (n // vbs))
    full, rest = divmod(n, size)
    return (size,) * full + ((rest,) if rest else ())


class GhostBatchNorm(nn.Module):
    """``BatchNorm1d(momentum=0.01)`` applied per ghost batch of ``vbs`` rows (Qlib's ``GBN``).

    ``vbs=None`` is a plain full-batch BatchNorm1d (the encoder's input norm). Params ``scale``,
    ``bias``; ``batch_stats`` ``mean``, ``var`` (torch's ``running_mean`` / ``running_var``).
    """

    vbs: int | None = None
    momentum: float = BN_MOMENTUM
    eps: float = BN_EPS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if not train:
            return (x - running_mean.value) * jax.lax.rsqrt(
                running_var.value + self.eps
            ) * scale + bias

        sizes = ghost_batch_sizes(x.shape[0], self.vbs)
        if min(sizes) < 2:
            raise ValueError(
                f"batch of {x.shape[0]} rows splits into ghost batches {sizes}; training batch norm "
                "needs at least 2 rows per ghost batch (torch raises too): change the batch size or vbs"
            )
        normalised, means, variances = _normalise_chunks(x, sizes, self.eps)
        if not self.is_initializing():
            counts = jnp.asarray(sizes, x.dtype)[:, None]
            running_mean.value = _sequential_ema(running_mean.value, means, self.momentum)
            running_var.value = _sequential_ema(
                running_var.value, variances * counts / (counts - 1), self.momentum
            )
        return normalised * scale + bias


def _normalise_chunks(x: jax.Array, sizes: tuple[int, ...], eps: float):
    """Per-chunk standardisation; returns (x_hat, chunk means [C, F], biased chunk variances [C, F])."""
    size, features = sizes[0], x.shape[-1]
    n_full = x.shape[0] // size
    parts = [x[: n_full * size].reshape(n_full, size, features)]
    if n_full * size < x.shape[0]:
        parts.append(x[n_full * size :][None])
    outs, means, variances = [], [], []
    for part in parts:
        mean = jnp.mean(part, axis=1, keepdims=True)
        var = jnp.mean(jnp.square(part - mean), axis=1, keepdims=True)
        outs.append(((part - mean) * jax.lax.rsqrt(var + eps)).reshape(-1, features))
        means.append(mean[:, 0])
        variances.append(var[:, 0])
    return jnp.concatenate(outs), jnp.concatenate(means), jnp.concatenate(variances)


def _sequential_ema(running: jax.Array, batch_stats: jax.Array, momentum: float) -> jax.Array:
    """``running`` after one torch momentum update per row of ``batch_stats`` (in order), closed form."""
    n = batch_stats.shape[0]
    decay = 1.0 - momentum
    weights = momentum * decay ** jnp.arange(n - 1, -1, -1, dtype=running.dtype)
    return decay**n * running + jnp.sum(
        weights[:, None] * batch_stats, axis=0
    )  # no matmul: no TF32 on GPU


class GLU(nn.Module):
    """y = GBN(fc(x)); y[:, :out] * sigmoid(y[:, out:]). ``fc`` may be a Linear shared across steps."""

    out_dim: int
    vbs: int | None = None
    fc: nn.Module | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        fc = self.fc if self.fc is not None else Linear(2 * self.out_dim, name="fc")
        y = GhostBatchNorm(self.vbs, name="bn")(fc(x), train)
        return y[:, : self.out_dim] * jax.nn.sigmoid(y[:, self.out_dim :])


class FeatureTransformer(nn.Module):
    """Shared GLUs (first one without residual), then ``n_ind`` own GLUs, residuals scaled by sqrt(0.5).

    Each GLU owns its ghost batch norm even when its Linear is shared.
    """

    out_dim: int
    shared: Sequence[nn.Module] = ()
    n_ind: int = 2
    vbs: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.shared:
            x = GLU(self.out_dim, self.vbs, fc=self.shared[0], name="shared_0")(x, train)
            for i, fc in enumerate(self.shared[1:], start=1):
                x = (
                    x + GLU(self.out_dim, self.vbs, fc=fc, name=f"shared_{i}")(x, train)
                ) * RESIDUAL_SCALE
        elif x.shape[-1] != self.out_dim:
            raise ValueError(
                f"n_shared=0 needs input width == output width ({x.shape[-1]} != {self.out_dim}): "
                "Qlib's FeatureTransformer then adds its input residually; use n_shared >= 1"
            )
        for i in range(self.n_ind):
            x = (x + GLU(self.out_dim, self.vbs, name=f"independ_{i}")(x, train)) * RESIDUAL_SCALE
        return x


class AttentionTransformer(nn.Module):
    """Feature mask M = sparsemax(GBN(fc(a)) * priors) over the ``inp_dim`` features."""

    inp_dim: int
    vbs: int | None = None

    @nn.compact
    def __call__(self, a: jax.Array, priors: jax.Array, train: bool = False) -> jax.Array:
        logits = GhostBatchNorm(self.vbs, name="bn")(Linear(self.inp_dim, name="fc")(a), train)
        return sparsemax(logits * priors)


class DecisionStep(nn.Module):
    """Mask the input with the attention of ``a``, then transform it: (x_te [N, n_d+n_a], mask)."""

    inp_dim: int
    n_d: int
    n_a: int
    shared: Sequence[nn.Module] = ()
    n_ind: int = 2
    vbs: int | None = None

    @nn.compact
    def __call__(self, x, a, priors, train: bool = False) -> tuple[jax.Array, jax.Array]:
        mask = AttentionTransformer(self.inp_dim, self.vbs, name="atten_tran")(a, priors, train)
        transform = FeatureTransformer(
            self.n_d + self.n_a, self.shared, self.n_ind, self.vbs, name="fea_tran"
        )
        return transform(x * mask, train), mask


def _shared_linears(n_shared: int, width: int) -> list[Linear]:
    """The Linears every FeatureTransformer of an encoder/decoder reuses (``shared_{i}``)."""
    return [Linear(width, name=f"shared_{i}") for i in range(n_shared)]


def _check_input(x: jax.Array, inp_dim: int) -> None:
    if x.ndim != 2 or x.shape[1] != inp_dim:
        raise ValueError(
            f"TabNet expects input [N, inp_dim={inp_dim}], got shape {x.shape}; set inp_dim to the feature count"
        )


# --------------------------------------------------------------------------------------------
# encoder, decoder, fine-tuning model


class TabNet(nn.Module):
    """Qlib's ``TabNet`` encoder (its constructor defaults): ``(vec [N, out_dim], sparse_loss)``.

    ``paper=True`` updates the priors with ``relax`` after each decision step and normalises the
    sparsity loss as the paper does; ``paper=False`` is Qlib (priors fixed, loss = sum over steps
    of the mean entropy of the mask).
    """

    inp_dim: int = 6
    out_dim: int = 6
    n_d: int = 64
    n_a: int = 64
    n_shared: int = 2
    n_ind: int = 2
    n_steps: int = 5
    relax: float = 1.2
    vbs: int | None = 1024
    paper: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, priors: jax.Array | None = None, train: bool = False):
        _check_input(x, self.inp_dim)
        if self.n_steps < 2:
            raise ValueError(
                f"n_steps={self.n_steps}: TabNet needs n_steps >= 2 (n_steps - 1 decision steps)"
            )
        priors = jnp.ones_like(x) if priors is None else priors
        if priors.shape != x.shape:
            raise ValueError(f"priors shape {priors.shape} must equal the input shape {x.shape}")
        shared = _shared_linears(self.n_shared, 2 * (self.n_d + self.n_a))
        x = GhostBatchNorm(None, name="bn")(x, train)
        first = FeatureTransformer(
            self.n_d + self.n_a, shared, self.n_ind, self.vbs, name="first_step"
        )
        attention_input = first(x, train)[:, self.n_d :]
        out = jnp.zeros((x.shape[0], self.n_d), x.dtype)
        entropies = []
        for i in range(self.n_steps - 1):
            step = DecisionStep(
                self.inp_dim, self.n_d, self.n_a, shared, self.n_ind, self.vbs, name=f"steps_{i}"
            )
            x_te, mask = step(x, attention_input, priors, train)
            out = out + jax.nn.relu(x_te[:, : self.n_d])
            attention_input = x_te[:, self.n_d :]
            entropies.append(-mask * jnp.log(mask + ENTROPY_EPS))
            if self.paper:
                priors = priors * (self.relax - mask)
        if self.paper:  # paper: sum over features, mean over rows and decision steps
            sparse_loss = sum(jnp.sum(e) for e in entropies) / (x.shape[0] * len(entropies))
        else:  # Qlib: mean over rows and features, summed over steps
            sparse_loss = sum(jnp.mean(e) for e in entropies)
        return Linear(self.out_dim, name="fc")(out), sparse_loss


class DecoderStep(nn.Module):
    """FeatureTransformer to ``out_dim`` followed by ``Linear(out_dim, out_dim)``."""

    out_dim: int
    shared: Sequence[nn.Module] = ()
    n_ind: int = 2
    vbs: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = FeatureTransformer(self.out_dim, self.shared, self.n_ind, self.vbs, name="fea_tran")(
            x, train
        )
        return Linear(self.out_dim, name="fc")(x)


class TabNetDecoder(nn.Module):
    """Qlib's ``TabNet_Decoder(inp_dim, out_dim, n_shared, n_ind, vbs, n_steps)``: sum of ``n_steps`` steps."""

    inp_dim: int
    out_dim: int
    n_shared: int
    n_ind: int
    vbs: int | None
    n_steps: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_input(x, self.inp_dim)
        shared = _shared_linears(self.n_shared, 2 * self.out_dim)
        out = jnp.zeros((x.shape[0], self.out_dim), x.dtype)
        for i in range(self.n_steps):
            out = out + DecoderStep(self.out_dim, shared, self.n_ind, self.vbs, name=f"steps_{i}")(
                x, train
            )
        return out


class TabNetFinetune(nn.Module):
    """Qlib's ``FinetuneModel(out_dim, final_out_dim, TabNet(...))`` as ``TabnetModel`` builds it.

    ``__call__(x [N, inp_dim], priors=None (ones), train=False)`` -> [N]. See the module docstring
    for ``paper``. :meth:`encoder`, :meth:`decoder` and :meth:`pretrainer` give the unbound
    pretraining modules (``params["model"]`` are the encoder's variables).
    """

    inp_dim: int
    out_dim: int = 64
    final_out_dim: int = 1
    n_d: int = 64
    n_a: int = 64
    n_shared: int = 2
    n_ind: int = 2
    n_steps: int = 5
    relax: float = 1.3
    vbs: int | None = 2048
    paper: bool = False

    def _encoder_kwargs(self) -> dict:
        dims = {k: getattr(self, k) for k in QLIB_ENCODER_DIMS} if self.paper else QLIB_ENCODER_DIMS
        fixed = dict(
            inp_dim=self.inp_dim,
            out_dim=self.out_dim,
            relax=self.relax,
            vbs=self.vbs,
            paper=self.paper,
        )
        return {**fixed, **dims}

    def encoder(self) -> TabNet:
        """The encoder (``params["model"]``), unbound, for pretraining."""
        return TabNet(**self._encoder_kwargs(), parent=None)

    def decoder(self) -> TabNetDecoder:
        """The pretraining decoder as ``TabnetModel`` builds it (always with these fields' values)."""
        return TabNetDecoder(
            self.out_dim,
            self.inp_dim,
            self.n_shared,
            self.n_ind,
            self.vbs,
            self.n_steps,
            parent=None,
        )

    def pretrainer(self) -> TabNetPretrainer:
        """Encoder + decoder for :func:`pretrain_loss`, unbound."""
        return TabNetPretrainer(self.encoder(), self.decoder(), parent=None)

    def frozen_param_names(self) -> tuple[str, ...]:
        """Top-level param subtrees Qlib never updates during fine-tuning (its head, unless ``paper``)."""
        return () if self.paper else ("fc",)

    @nn.compact
    def __call__(
        self, x: jax.Array, priors: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        vec, sparse_loss = TabNet(**self._encoder_kwargs(), name="model")(x, priors, train)
        if not self.is_initializing():  # keep the loss out of the variables that init returns
            self.sow(
                SPARSE_LOSS_COLLECTION,
                "sparse_loss",
                sparse_loss,
                init_fn=lambda: 0.0,
                reduce_fn=lambda _, new: new,
            )
        out = Linear(self.final_out_dim, name="fc")(vec)
        return out[:, 0] if self.final_out_dim == 1 else out


# --------------------------------------------------------------------------------------------
# self-supervised pretraining (Qlib's objective)


def pretrain_mask(key: jax.Array, shape: tuple[int, int], ps: float = 0.3) -> jax.Array:
    """S ~ Bernoulli(ps) as float32 [batch, inp_dim]: 1 marks a feature to hide and reconstruct."""
    return jax.random.bernoulli(key, ps, shape).astype(jnp.float32)


def reconstruction_loss(x: jax.Array, reconstruction: jax.Array, s_mask: jax.Array) -> jax.Array:
    """Qlib's pretraining loss: sum_{b,j} ((x*S - f) * S / D_j)^2.

    D_j = sqrt(sum_b (f_bj - mean_b f_j)^2) is the spread of the *reconstruction* f (the paper
    uses the data's), there is no 1/N, and D is differentiated through, all as in Qlib.
    """
    spread = jnp.sqrt(
        jnp.sum(jnp.square(reconstruction - jnp.mean(reconstruction, axis=0)), axis=0)
    )
    return jnp.sum(jnp.square((x * s_mask - reconstruction) * s_mask / spread))


class TabNetPretrainer(nn.Module):
    """Encoder and decoder as ``TabnetModel`` pretrains them: ``(x, S) -> f``, the reconstruction.

    The encoder sees ``x * (1 - S)`` with priors ``1 - S``; the decoder maps its ``vec`` back to
    the features. Variables are ``{"encoder": ..., "decoder": ...}``; after pretraining,
    ``params["encoder"]`` (and its batch_stats) are :class:`TabNetFinetune`'s ``"model"``.
    """

    encoder: TabNet
    decoder: TabNetDecoder

    @nn.compact
    def __call__(self, x: jax.Array, s_mask: jax.Array, train: bool = False) -> jax.Array:
        keep = 1.0 - s_mask
        vec, _ = self.encoder(x * keep, keep, train)
        return self.decoder(vec, train)


def pretrain_loss(apply_fn, variables: dict, x: jax.Array, s_mask: jax.Array, train: bool = True):
    """Qlib's pretraining objective on one batch: ``(loss, new batch_stats or None)``.

    ``apply_fn`` is :class:`TabNetPretrainer`'s ``apply``; the loss is :func:`reconstruction_loss`
    of its reconstruction. In train mode (Qlib's ``pretrain_epoch``) batch norms use ghost-batch
    statistics and their updated running statistics are returned; in eval mode
    (``pretrain_test_epoch``) they use the running statistics and None is returned. Qlib sums
    over the batch (no 1/N): as an engine objective its count is 1.
    """
    if train:
        reconstruction, updates = apply_fn(
            variables, x, s_mask, train=True, mutable=["batch_stats"]
        )
        return reconstruction_loss(x, reconstruction, s_mask), updates["batch_stats"]
    return reconstruction_loss(x, apply_fn(variables, x, s_mask), s_mask), None
