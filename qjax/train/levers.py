"""The CPU speed levers a :class:`TrainConfig` leaves to the model: ``micro_batch``,
``cpu_split``, ``replica_chunk``, ``cpu_dots``, ``cpu_opt_level`` and ``cpu_eval_rows`` set to
None.

Each lever was measured per model family (``benchmarks/results/levers_cpu.md``,
``levers_cpu_more.md``, ``levers_cpu_rnn_rows.md``): KRNN and TabNet train faster on one CPU
device in micro-batches, the rest with both levers on; TabNet's matrix products run in Eigen
(``benchmarks/results/xla_dots_cpu.md``); SFM's programs compile at LLVM's -O1
(``benchmarks/results/compile_programs_cpu_levels*.md``); evaluation runs its forward in the
rows a family predicts in on CPU (``benchmarks/results/eval_rows_cpu.md``). A family's home
states its choice in its wrapper spec (:meth:`qjax.models.spec.ModelSpec.levers`); the
estimators and the CLI copy it into the config, and :func:`resolve` gives a direct ``fit`` call
the same, found by the module's class in the model registry. A value the user set always wins; a
module no family registered gets the engine's defaults (automatic micro-batches, each batch
split over the CPU devices, whole evaluation batches).
"""

from __future__ import annotations

import dataclasses

from qjax.train.config import TrainConfig

# replica_chunk None: the engine's rule per platform (qjax.train.parallel.replica_group).
ENGINE_DEFAULTS = {
    "micro_batch": "auto",
    "cpu_split": True,
    "replica_chunk": None,
    "cpu_dots": "default",
    "cpu_opt_level": "default",
    "cpu_eval_rows": "off",
}


def resolve(config: TrainConfig, network: type) -> TrainConfig:
    """``config`` with every lever left at None set to the choice of the model family whose
    network class is ``network`` (the module's class), else to the engine's default."""
    if all(getattr(config, name) is not None for name in ENGINE_DEFAULTS):
        return config
    # Imported here: the registry imports the model homes, which the engine must not need.
    from qjax.models.registry import spec_of

    spec = spec_of(network)
    chosen = {**ENGINE_DEFAULTS, **({} if spec is None else spec.levers(config.micro_batch))}
    return dataclasses.replace(
        config, **{name: value for name, value in chosen.items() if getattr(config, name) is None}
    )


def predict_choice(network: type) -> tuple[str, str]:
    """The XLA:CPU matrix-product backend and optimisation level ``predict`` uses for the model
    family whose network class is ``network``: its spec's ``cpu_predict_dots`` and the level it
    trains at, else the engine's defaults."""
    from qjax.models.registry import spec_of  # as in resolve

    spec = spec_of(network)
    if spec is None:
        return ENGINE_DEFAULTS["cpu_dots"], ENGINE_DEFAULTS["cpu_opt_level"]
    level = spec.levers().get("cpu_opt_level", ENGINE_DEFAULTS["cpu_opt_level"])
    return spec.cpu_predict_dots, level
