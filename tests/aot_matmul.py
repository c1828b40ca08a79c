"""Run by tests/test_aot.py in the libtpu environment (.venv-tpu): compiles one bf16 matmul for a single v5e chip and
prints one JSON line of its report (FLOPs, roofline and the compiler's own time estimate)."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from ela_jax import aot


def main(size: int) -> None:
    tpu = aot.parse_slice("v5e-1")
    device = aot.slice_devices(tpu)[0]
    operand = jax.ShapeDtypeStruct((size, size), jnp.bfloat16, sharding=SingleDeviceSharding(device))
    compiled = jax.jit(jnp.dot).lower(operand, operand).compile()
    print(json.dumps(aot.program_report(compiled, tpu.chip)))


if __name__ == "__main__":
    main(int(sys.argv[1]))
