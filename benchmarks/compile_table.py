"""The ahead-of-time compile table: every `python -m ela_jax.compile --search_batch` report in a folder as one
markdown table (largest fitting global batch per config, mesh preset, slice and remat, with its memory and roofline).

Run: python benchmarks/compile_table.py [--reports benchmarks/results/compile]
Writes <reports>/README.md and prints the table.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import common  # noqa: F401  (puts the repository root on sys.path)

from ela_jax import aot

PREAMBLE = """# Ahead-of-time TPU compile reports

Written by `benchmarks/compile_table.py` from the JSON reports beside it; each is one
`python -m ela_jax.compile --search_batch` run (`benchmarks/compile_tables.sh` lists the commands). Memory is XLA's
plan per chip; the roofline is a lower bound on the step time (larger of the unrolled step's FLOPs / peak bf16 and
XLA's bytes / HBM bandwidth; collectives ignored, and the byte count sees a scanned layer once). What the columns
mean: `launch/README.md`.

"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", default=os.path.join(os.path.dirname(__file__), "results", "compile"))
    args = parser.parse_args(argv)
    reports = []
    for path in sorted(glob.glob(os.path.join(args.reports, "*.json"))):
        with open(path) as f:
            report = json.load(f)
        if "tries" in report:  # single-batch reports (no --search_batch) have no row
            reports.append(report)
    table = aot.markdown_table(reports)
    with open(os.path.join(args.reports, "README.md"), "w") as f:
        f.write(PREAMBLE + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
