"""Record reference vectors from TensorFlow and Keras into the conformance package's data.

Run it with a Python that has TensorFlow and Keras 3 (the project's own venv has neither) and can
import cropcore and cropcore_conformance (installed, or on ``PYTHONPATH``)::

    /work/tfenv/bin/python scripts/record_reference.py [--output PATH]

The default output is ``conformance/cropcore_conformance/data/tf_reference.npz``, the one copy:
the conformance package ships it and cropcore's tests read it through
``cropcore_conformance.vectors``. The recorder itself is the package ``scripts/reference/``.

Requirements, in order of importance:

- Never feed TensorFlow an input that crashes it (notes/tf_semantics.md §4): every call is checked
  first by ``reference.tf_calls.refuse_crash_input``, which emulates TF's float32 sample
  coordinates and refuses any call in which one would be NaN (TF casts it to int: a segfault), NaN
  boxes for the gradient ops, and rank-1 boxes for the gradient ops.
- Deterministic: fixed seeds, and TF runs with one intra-op and one inter-op thread, so that the
  order in which ``CropAndResizeGradImage`` accumulates into a pixel (and hence its rounding) is
  TF's sequential order.
- Compact: small images, small crops, deflated. Re-recording with the same libraries gives the
  same bytes (``reference.npz.write_npz``), so ``sha256sum`` tells whether anything changed.

File layout: key ``meta`` is a JSON document (versions, seed, and one entry per case: ``id``,
``op``, ``name``, the scalar parameters, the names of the case's arrays); each array of a case is
stored under ``"<id>/<array name>"``. Case ids are ``"<op>/<name>"`` and are stable: tests are
parametrised by them. The ops are ``crop_and_resize``, ``grad_image``, ``grad_boxes`` (values
recorded from TF), ``error`` (an input TF refuses, with TF's exception type and the Python
exception cropcore maps it to), ``crop2d`` (Keras ``Cropping2D`` values) and ``crop2d_error``
(Keras's exception type for a bad ``cropping`` or input).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from reference.crop2d import record_crop2d, record_crop2d_errors
from reference.errors import record_errors
from reference.forward import record_forward
from reference.gradients import record_grad_boxes, record_grad_image
from reference.npz import SEED, Recorder

from cropcore_conformance.vectors import DATA_FILE

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "conformance" / "cropcore_conformance" / "data" / DATA_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    # One thread each, before any op runs: GradImage's accumulation order is then sequential.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.config.set_image_data_format("channels_last")
    keras.utils.set_random_seed(SEED)

    rec = Recorder()
    record_forward(rec, np.random.default_rng([SEED, 1]))
    record_grad_image(rec, np.random.default_rng([SEED, 2]))
    record_grad_boxes(rec, np.random.default_rng([SEED, 3]))
    record_errors(rec)
    record_crop2d(rec, np.random.default_rng([SEED, 4]))
    record_crop2d_errors(rec)
    versions = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    rec.save(args.output, versions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
