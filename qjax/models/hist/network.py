"""HIST: predefined-concept, hidden-concept and individual information for one day's stocks.

Port of Qlib's ``HISTModel`` (``pytorch_hist.py``). One call sees one trading day: ``x`` holds
the day's N stocks and ``concept_matrix`` [N, K] their rows of the stock-to-concept matrix.

Static shapes instead of Qlib's data-dependent filtering: Qlib drops concept rows whose
aggregated hidden vector sums to zero before its row softmaxes; here those rows stay and get
zero softmax weight (:func:`qjax.models.gats.network.masked_softmax`), which is the same function.
Padded stocks (``mask`` False) are removed from the concept sums, from the hidden-concept
neighbour search and from every softmax, so valid rows equal the unpadded computation.

The hidden-concept matrix M links every stock to its most similar other stock: M[i, j*(i)] =
max_j≠i cos(r_i, r_j), plus cos(r_j, r_j) on the diagonal of every stock that was picked.
Gradients flow through those similarity values, never through the argmax.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from qjax.models.gats.network import DailyStockRNN, masked_softmax
from qjax.models.layers import Linear
from qjax.row_split import whole

# H->H layers with xavier-uniform kernels; the starred ones in Qlib's code are never used.
_USED_HIDDEN = ("fc_es", "fc_is", "fc_es_fore", "fc_is_fore", "fc_es_back", "fc_is_back", "fc_indi")
_UNUSED_HIDDEN = ("fc_es_middle", "fc_is_middle", "fc_indi_fore")
_UNUSED_HEADS = ("fc_out_es", "fc_out_is", "fc_out_indi")


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Qlib's a·b / (‖a‖‖b‖ + 1e-6) for all row pairs: [N, H], [M, H] -> [N, M].

    Zero rows (masked concepts) have norm 0; the double ``where`` keeps sqrt's infinite slope at
    0 out of the gradient.
    """

    def norm(v):
        squared = jnp.sum(v * v, axis=1)
        positive = squared > 0
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)

    return (a @ b.T) / (norm(a)[:, None] * norm(b)[None, :] + 1e-6)


def hidden_concept_matrix(similarity: jax.Array, valid: jax.Array) -> jax.Array:
    """Qlib's M [N, N] from the stock-stock similarity, restricted to valid stocks.

    Row i holds max_{j≠i} S[i, j] at its argmax column (the zeroed diagonal competes, so a row of
    negative similarities points at itself with value 0); every column that received a nonzero
    entry also gets S[j, j] on the diagonal. Padded rows are empty and padded columns are never
    picked.
    """
    n = similarity.shape[0]
    off_diagonal = similarity * (1.0 - jnp.eye(n, dtype=similarity.dtype))
    candidates = jnp.where(valid[None, :], off_diagonal, -jnp.inf)
    picked = jnp.argmax(candidates, axis=1)
    value = jnp.take_along_axis(off_diagonal, picked[:, None], axis=1)[:, 0]
    links = (
        jax.nn.one_hot(picked, n, dtype=similarity.dtype) * jnp.where(valid, value, 0.0)[:, None]
    )
    picked_columns = jnp.sum(links, axis=0) != 0
    return links + jnp.diag(jnp.where(picked_columns, jnp.diagonal(similarity), 0.0))


class HISTModel(DailyStockRNN):
    """Qlib ``HISTModel``: ``(x [N, d_feat*T] or [N, T, d_feat], concept_matrix [N, K]) -> [N]``.

    Parameters (torch names): ``rnn``; ten H->H Linears with xavier-uniform kernels (``fc_es``,
    ``fc_is``, ``fc_es_fore``, ``fc_is_fore``, ``fc_es_back``, ``fc_is_back``, ``fc_indi`` and
    the unused ``fc_es_middle``, ``fc_is_middle``, ``fc_indi_fore``); Linear(H, 1) heads
    ``fc_out`` and the unused ``fc_out_es``, ``fc_out_is``, ``fc_out_indi``. The unused layers
    are kept so parameter counts and checkpoints match Qlib (they never receive gradient).
    """

    @nn.compact
    def __call__(self, x, concept_matrix, mask: jax.Array | None = None, train: bool = False):
        hidden_size = self.hidden_size
        xavier = nn.initializers.xavier_uniform()
        dense = {name: Linear(hidden_size, kernel_init=xavier, name=name) for name in _USED_HIDDEN}
        if self.is_initializing():
            probe = jnp.zeros((1, hidden_size))
            for name in _UNUSED_HIDDEN:
                Linear(hidden_size, kernel_init=xavier, name=name)(probe)
            for name in _UNUSED_HEADS:
                Linear(1, name=name)(probe)

        hidden, valid = self.encode_stocks(x, mask, train)  # [N, H], [N]
        n_stocks = hidden.shape[0]
        if concept_matrix.ndim != 2 or concept_matrix.shape[0] != n_stocks:
            raise ValueError(
                f"concept_matrix must be [N={n_stocks}, n_concepts] (the day's rows of stock2concept), "
                f"got shape {concept_matrix.shape}"
            )

        # Predefined concepts: member-weighted concept vectors, then attention back to stocks.
        concept_matrix = whole(concept_matrix)  # the day's cross-stock part runs whole
        membership = jnp.where(valid[:, None], concept_matrix.astype(hidden.dtype), 0.0)
        members = jnp.sum(membership, axis=0)  # [K]
        weights = membership / (members[None, :] * membership + 1.0)
        concepts = weights.T @ hidden  # [K, H]
        concept_valid = jnp.sum(concepts, axis=1) != 0
        to_concept = masked_softmax(
            cosine_similarity(hidden, concepts), concept_valid[None, :], axis=1
        )
        shared = dense["fc_es"](to_concept @ concepts)
        shared_back = dense["fc_es_back"](shared)
        out_shared = nn.leaky_relu(dense["fc_es_fore"](shared), negative_slope=0.01)

        # Hidden concepts: each stock's most similar peer in the residual space.
        residual = hidden - shared_back
        links = hidden_concept_matrix(cosine_similarity(residual, residual), valid)
        hidden_concepts = links.T @ residual  # [N, H]
        hidden_valid = (jnp.sum(hidden_concepts, axis=1) != 0) & valid
        to_hidden = masked_softmax(
            cosine_similarity(residual, hidden_concepts), hidden_valid[None, :], axis=1
        )
        implicit = dense["fc_is"](to_hidden @ hidden_concepts)
        implicit_back = dense["fc_is_back"](implicit)
        out_implicit = nn.leaky_relu(dense["fc_is_fore"](implicit), negative_slope=0.01)

        # Individual information: what neither concept branch explains.
        individual = hidden - shared_back - implicit_back
        out_individual = nn.leaky_relu(dense["fc_indi"](individual), negative_slope=0.01)

        return Linear(1, name="fc_out")(out_shared + out_implicit + out_individual)[:, 0]
