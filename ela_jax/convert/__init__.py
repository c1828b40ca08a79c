"""Conversion between ela_jax checkpoints and PyTorch / Hugging Face `transformers` layouts (both directions)."""
