"""Side-by-side benchmark: TensorFlow's CPU kernel and every available cropcore backend, one process.

This is ``cropcore bench`` (:mod:`cropcore.bench`, where the workloads, the timing and the report
live), kept under its old name; it takes the same options::

    python benchmarks/bench_crop.py                      # every workload and op
    python benchmarks/bench_crop.py --repeat 50 --json bench.json
    python benchmarks/bench_crop.py --workloads roi tiny --backends numba numpy

See ``cropcore bench --help`` and docs/cli.md.
"""

from __future__ import annotations

import sys

from cropcore.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="bench_crop.py"))
