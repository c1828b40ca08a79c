"""ela_jax: ELA (expansive lexicon-patch alignment) vision-language pre-training in JAX/Flax.

The package itself changes nothing in the process: `import ela_jax.torch_model` leaves a PyTorch process's malloc
settings alone. The JAX side (ela_jax.parallel, ela_jax.models, ela_jax.objectives) applies ela_jax.host_allocator's
settings when it is imported, before JAX starts XLA:CPU's threads.
"""

__version__ = "0.1.0"


def load(workdir: str, step: int | None = None, batch_size: int = 256):
    """The trained model in `workdir` with encode_images / encode_texts (see ela_jax.inference)."""
    from ela_jax.inference import load as _load

    return _load(workdir, step, batch_size)
