"""Run by tests/test_aot.py in the libtpu environment (.venv-tpu): compiles the tiny config's train step for a
2x2 TPU v5e slice under each mesh preset and prints one JSON line of the reports.

Run: .venv-tpu/bin/python -m tests.aot_presets v5e-4 [lexicon impl]
"""

from __future__ import annotations

import json
import sys
import tempfile

from configs import mesh_presets
from ela_jax import aot
from tests.helpers import make_tiny_config

# No model dimension of the tiny config is 24, so a [24, 24] collective can only be a batch-by-batch matrix.
BATCH = 24
PRESETS = ("dp", "fsdp", "fsdp_tp")


def main(topology: str, lexicon_impl: str = "chunked") -> None:
    tpu = aot.parse_slice(topology)
    reports = {}
    for preset in PRESETS:
        config = make_tiny_config(batch_size=BATCH, **{"model.lexicon.impl": lexicon_impl})
        config = mesh_presets.apply_overlays(config, preset)
        target = aot.SliceTarget(config, tpu, tempfile.mkdtemp(prefix="ela_aot_"))
        reports[preset] = target.train_step()
    print(json.dumps(reports))


if __name__ == "__main__":
    main(*sys.argv[1:])
