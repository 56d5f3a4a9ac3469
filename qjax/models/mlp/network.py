"""MLP: Qlib's ``pytorch_nn.Net``, the network of ``DNNModelPytorch``.

Dropout(0.05) -> per hidden width h: [Linear -> BatchNorm1d -> LeakyReLU(0.1) | SiLU]
-> Dropout(0.05) -> Linear(h_last, output_dim). Output is [N, output_dim] (not squeezed, as
Qlib's). Linear weights use Qlib's kaiming-normal init (a=0.1, fan_in); biases keep torch's
uniform default.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from qjax.models.layers import Dropout, Linear

_ACTIVATIONS = {
    "LeakyReLU": lambda x: jax.nn.leaky_relu(x, negative_slope=0.1),
    "SiLU": jax.nn.silu,
}

# kaiming_normal_(a=0.1, mode="fan_in", nonlinearity="leaky_relu"): std = gain / sqrt(fan_in),
# gain^2 = 2 / (1 + a^2).
_kaiming_leaky = jax.nn.initializers.variance_scaling(2.0 / (1.0 + 0.1**2), "fan_in", "normal")


class TorchBatchNorm(nn.Module):
    """``torch.nn.BatchNorm1d`` over the batch axis of [N, C] input, running stats included.

    Differs from ``flax.linen.BatchNorm`` in one place that matters for parity: the running
    variance is updated with the *unbiased* batch variance (x n/(n-1)), as torch does; the
    batch itself is normalised with the biased variance in both. ``momentum`` is torch's
    (weight of the new batch, 0.1), not flax's (weight of the old value).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, use_running_average: bool):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            n = x.shape[0]
            if n < 2:
                raise ValueError(
                    f"BatchNorm in train mode needs a batch of at least 2 rows, got {n} "
                    "(torch raises too); use a larger batch or train=False"
                )
            mean = jnp.mean(x, axis=0)
            var = jnp.mean(jnp.square(x - mean), axis=0)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
                ra_var.value = (1.0 - m) * ra_var.value + m * var * (n / (n - 1))
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class Net(nn.Module):
    """Qlib ``Net(input_dim, output_dim=1, layers=(256,), act="LeakyReLU")``.

    Input [N, input_dim] -> output [N, output_dim]. BatchNorm state lives in the
    ``"batch_stats"`` collection (apply with ``mutable=["batch_stats"]`` when ``train``).
    ``dropout`` is Qlib's hard-coded 0.05 (input and before the output layer), exposed so it
    can be changed; it is not a Qlib constructor argument.
    """

    input_dim: int
    output_dim: int = 1
    layers: Sequence[int] = (256,)
    act: str = "LeakyReLU"
    dropout: float = 0.05

    def __post_init__(self):
        # YAML/JSON configs give lists; a tuple keeps the module hashable (jit static args).
        object.__setattr__(self, "layers", tuple(self.layers))
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.act not in _ACTIVATIONS:
            raise ValueError(
                f"unknown act {self.act!r}; Qlib's Net supports {sorted(_ACTIVATIONS)}"
            )
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"Net expects input [N, {self.input_dim}], got {x.shape}; set input_dim to the "
                "number of feature columns"
            )
        activation = _ACTIVATIONS[self.act]
        h = Dropout(self.dropout, deterministic=not train)(x)
        for i, width in enumerate(self.layers):
            h = Linear(width, kernel_init=_kaiming_leaky, name=f"fc_{i}")(h)
            h = TorchBatchNorm(name=f"bn_{i}")(h, use_running_average=not train)
            h = activation(h)
        h = Dropout(self.dropout, deterministic=not train)(h)
        return Linear(self.output_dim, kernel_init=_kaiming_leaky, name="fc_out")(h)
