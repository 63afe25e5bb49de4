"""jax-cat: compute-aligned post-training (CAT) and SFT/RL task-vector synthesis (DoTS) in JAX/Flax NNX."""

__version__ = "0.1.0"
