"""Mesh presets: config overlays named after a config file's path (`--config configs/demo.py:fsdp_tp`)."""

from __future__ import annotations

import ml_collections

from ela_jax import config as config_lib

# Mesh presets, applied as overlays: `--config configs/demo.py:fsdp_tp` (several: `:fsdp,other`). Each splits the
# batch over devices, so each computes attention over the whole batch: contiguous attention slices
# (model.attention_batch_splits, a CPU knob) would live on different devices and be resharded.
WHOLE_BATCH_ATTENTION = {"model.attention_batch_splits": 1}
MESH_PRESETS = {
    # Pure data parallelism: parameters and optimizer state replicated, the batch split over every device.
    "dp": {"mesh.data": -1, "mesh.fsdp": 1, "mesh.tensor": 1, **WHOLE_BATCH_ATTENTION},
    # FSDP (ZeRO-3): the batch and every large kernel's `embed` axis split over every device.
    "fsdp": {"mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": 1, **WHOLE_BATCH_ATTENTION},
    # FSDP x 2-way tensor parallelism (heads, MLP and vocabulary axes); the vocabulary is padded so it divides.
    "fsdp_tp": {
        "mesh.data": 1,
        "mesh.fsdp": -1,
        "mesh.tensor": 2,
        "model.vocab_multiple": 128,
        **WHOLE_BATCH_ATTENTION,
    },
}


def apply_overlays(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the comma-separated presets named in a config file's argument (the text after ':')."""
    for name in filter(None, (arg or "").split(",")):
        if name not in MESH_PRESETS:
            raise config_lib.ConfigError(f"unknown config overlay {name!r}; known: {sorted(MESH_PRESETS)}")
        for key, value in MESH_PRESETS[name].items():
            config_lib.set_dotted(config, key, value)
    return config
