"""ela_jax: ELA (expansive lexicon-patch alignment) vision-language pre-training in JAX/Flax."""

from ela_jax import host_allocator

__version__ = "0.1.0"

# Before JAX starts XLA:CPU's threads (see ela_jax.host_allocator).
host_allocator.configure()


def load(workdir: str, step: int | None = None, batch_size: int = 256):
    """The trained model in `workdir` with encode_images / encode_texts (see ela_jax.inference)."""
    from ela_jax.inference import load as _load

    return _load(workdir, step, batch_size)
