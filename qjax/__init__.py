"""qjax: a pure-functional JAX/Flax port of Qlib's deep-learning model zoo."""

__version__ = "0.1.0"
