"""The ELA model's Flax modules."""

from ela_jax import host_allocator

# The JAX side applies the host-allocator settings on import, before JAX starts XLA:CPU's threads at its first
# computation (see ela_jax.host_allocator); the package's own import leaves a PyTorch process alone.
host_allocator.configure()
