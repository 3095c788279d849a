"""Live bit-for-bit comparison of cropcore_numpy.kernels (or any backend) with TensorFlow 2.21's CPU kernels.

Run, in an environment with tensorflow-cpu 2.21 (not needed by the test suite):
    python scripts/compare_kernels_with_tensorflow.py [--seed N] [--scale K] [--backend NAME]

Loads backends/numpy/cropcore_numpy/kernels.py directly (no cropcore import); with ``--backend``,
calls cropcore's public functions on that backend instead (``numba``, ``torch``, ...). It runs TF
single-threaded (intra/inter-op 1, deterministic accumulation order) and compares every output
bit for bit. Columns: value-equal (np.array_equal, equal_nan), bit-equal (uint view), and
bit-equal after canonicalising NaNs (sign/payload ignored; -0.0 vs 0.0 and subnormals still
count). Never feeds TF inputs that crash it: non-finite computed coordinates (tf_safe), NaN boxes.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

_KERNELS = (
    Path(__file__).resolve().parents[1] / "backends" / "numpy" / "cropcore_numpy" / "kernels.py"
)
_spec = importlib.util.spec_from_file_location("kernels", _KERNELS)
K = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(K)
_REFERENCE = K

DTYPES = ["uint8", "uint16", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]
GRAD_DTYPES = ["float16", "float32", "float64"]


class ImageShape(collections.namedtuple("ImageShape", "batch height width depth")):
    pass


# cases, value-equal (equal_nan), bit-equal, bit-equal after canonicalising NaNs (sign/payload)
results: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
failures: list[str] = []


def record(category: str, mine: np.ndarray, theirs: np.ndarray, info: str) -> None:
    r = results[category]
    r[0] += 1
    same_shape = mine.shape == theirs.shape and mine.dtype == theirs.dtype
    value_eq = same_shape and np.array_equal(mine, theirs, equal_nan=True)
    if same_shape:
        uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[mine.dtype.itemsize]
        bit_eq = np.array_equal(mine.view(uint), theirs.view(uint))
    else:
        bit_eq = False
    r[1] += value_eq
    r[2] += bit_eq
    if same_shape:
        nan = np.array(np.nan, mine.dtype)
        canon_mine = np.where(np.isnan(mine), nan, mine).view(uint)
        canon_theirs = np.where(np.isnan(theirs), nan, theirs).view(uint)
        nan_canon_eq = np.array_equal(canon_mine, canon_theirs)
    else:
        nan_canon_eq = False
    r[3] += nan_canon_eq
    if not nan_canon_eq and len(failures) < 40:
        detail = ""
        if same_shape:
            bad = np.argwhere(mine.view(uint) != theirs.view(uint))
            idx = tuple(bad[0])
            detail = (
                f" first diff at {idx}: mine={mine[idx]!r} tf={theirs[idx]!r} ({len(bad)} diffs)"
            )
        else:
            detail = f" shapes {mine.shape} {mine.dtype} vs {theirs.shape} {theirs.dtype}"
        failures.append(f"[{category}] value_eq={value_eq} {info}{detail}")


# ---------------------------------------------------------------------------------------------
# TF calls


def tf_forward(image, boxes, box_ind, crop, method, ev):
    return tf.raw_ops.CropAndResize(
        image=image,
        boxes=boxes,
        box_ind=box_ind,
        crop_size=np.array(crop, np.int32),
        method=method,
        extrapolation_value=ev,
    ).numpy()


def tf_grad_image(grads, boxes, box_ind, shape, method, dtype):
    return tf.raw_ops.CropAndResizeGradImage(
        grads=grads,
        boxes=boxes,
        box_ind=box_ind,
        image_size=np.array(shape, np.int32),
        T=tf.as_dtype(dtype),
        method=method,
    ).numpy()


def tf_grad_boxes(grads, image, boxes, box_ind):
    return tf.raw_ops.CropAndResizeGradBoxes(
        grads=grads, image=image, boxes=boxes, box_ind=box_ind, method="bilinear"
    ).numpy()


def tf_safe(boxes, height, width, crop):
    """True when every coordinate TF computes (all three rounding variants) is finite."""
    with np.errstate(all="ignore"):
        for ratio_first in (False, True):
            for (a, b), size, c in (((0, 2), height, crop[0]), ((1, 3), width, crop[1])):
                coord = K._coordinates(boxes[:, a], boxes[:, b], size, c, ratio_first=ratio_first)
                if not np.isfinite(coord).all():
                    return False
    return True


# ---------------------------------------------------------------------------------------------
# Random inputs


def random_image(rng, shape, dtype, special=False):
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if dtype == "int64" and rng.random() < 0.5:
            # values whose float32 rounding differs if cast through double
            base = rng.integers(-(2**62), 2**62, size=shape, dtype=np.int64)
            img = base
        elif rng.random() < 0.3:
            img = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)
        else:
            lo, hi = max(info.min, -1000), min(info.max, 1000)
            img = rng.integers(lo, hi, size=shape, endpoint=True, dtype=dt)
        return img
    kind = rng.integers(0, 4)
    if kind == 0:
        img = rng.standard_normal(shape) * 100
    elif kind == 1:
        img = rng.integers(-50, 50, size=shape).astype(np.float64)
    elif kind == 2:
        img = rng.uniform(-1, 1, size=shape) * 10.0 ** rng.integers(-30, 30)
    else:
        img = rng.standard_normal(shape) * np.exp(rng.uniform(-20, 20, size=shape))
    img = img.astype(dt)
    if special and img.size:
        flat = img.reshape(-1)
        k = rng.integers(1, 4)
        pos = rng.integers(0, flat.size, size=k)
        flat[pos] = rng.choice([np.inf, -np.inf, np.nan], size=k)
    if dtype == "float64" and rng.random() < 0.2 and img.size:
        img.reshape(-1)[rng.integers(0, img.size)] = 1e300  # overflows the float32 cast
    return img


def random_coord_pair(rng, size, style):
    """(c1, c2) for one axis."""
    if style == "unit":
        return rng.uniform(0, 1, 2)
    if style == "wide":
        return rng.uniform(-0.7, 1.7, 2)
    if style == "flipped":
        a, b = np.sort(rng.uniform(-0.3, 1.3, 2))
        return np.array([b, a])
    if style == "degenerate":
        v = rng.uniform(-0.2, 1.2)
        return np.array([v, v])
    if style == "grid":
        n = max(size - 1, 1)
        return rng.integers(-1, n + 2, 2) / n
    if style == "edges":
        return rng.choice([0.0, 1.0, -0.0, 0.5, 1e-7, -1e-7, 1 - 1e-7, 1 + 1e-7], 2)
    if style == "outside":
        return rng.choice([-1, 1]) * rng.uniform(1.0, 3.0, 2)
    if style == "huge":
        return rng.choice([1e6, -1e6, 1e30, -1e30, 3e20, 1e-30, 0.0, 1.0], 2)
    raise ValueError(style)


STYLES = ["unit", "wide", "flipped", "degenerate", "grid", "edges", "outside", "huge"]


def random_boxes(rng, n, height, width):
    boxes = np.empty((n, 4), np.float64)
    styles = []
    for i in range(n):
        sy, sx = rng.choice(STYLES, 2, p=[0.2, 0.2, 0.15, 0.1, 0.12, 0.1, 0.08, 0.05])
        styles.append(f"{sy}/{sx}")
        boxes[i, [0, 2]] = random_coord_pair(rng, height, sy)
        boxes[i, [1, 3]] = random_coord_pair(rng, width, sx)
    return boxes.astype(np.float32), styles


def random_dim(rng):
    r = rng.random()
    if r < 0.15:
        return 1
    if r < 0.85:
        return int(rng.integers(2, 9))
    return int(rng.choice([16, 31, 58, 64, 100]))


def random_crop_dim(rng):
    r = rng.random()
    if r < 0.25:
        return 1
    if r < 0.9:
        return int(rng.integers(2, 9))
    return int(rng.choice([13, 14, 22, 31]))


def random_forward_case(rng, dtype):
    height, width = random_dim(rng), random_dim(rng)
    depth = int(rng.choice([0, 1, 1, 2, 3]))
    n = int(rng.choice([0, 1, 2, 3, 5]))
    batch = 0 if (n == 0 and rng.random() < 0.3) else int(rng.integers(1, 4))
    crop = (random_crop_dim(rng), random_crop_dim(rng))
    special = rng.random() < 0.15
    image = random_image(rng, (batch, height, width, depth), dtype, special)
    boxes, styles = random_boxes(rng, n, height, width)
    box_ind = rng.integers(0, max(batch, 1), n).astype(np.int32)
    return image, boxes, box_ind, crop, styles, special


def maybe_strided(rng, array):
    """Sometimes a non-contiguous view with the same values (as the NCHW path passes)."""
    r = rng.random()
    if r < 0.25:
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(array, 3, 1)), 1, 3)
    if r < 0.35 and array.shape[2] > 0:
        wide = np.zeros((*array.shape[:2], array.shape[2] * 2, *array.shape[3:]), array.dtype)
        wide[:, :, ::2] = array
        return wide[:, :, ::2]
    return array


# ---------------------------------------------------------------------------------------------
# Categories


def check_forward_random(rng, count):
    evs = [0.0, -1.0, 9.0, float("nan"), float("inf"), float("-inf"), 0.5]
    done = 0
    while done < count:
        dtype = DTYPES[done % len(DTYPES)]
        image, boxes, box_ind, crop, styles, special = random_forward_case(rng, dtype)
        if not tf_safe(boxes, image.shape[1], image.shape[2], crop):
            continue
        ev = float(np.float32(rng.choice(evs) if rng.random() < 0.8 else rng.standard_normal()))
        for method in ("bilinear", "nearest"):
            theirs = tf_forward(image, boxes, box_ind, crop, method, ev)
            mine = K.crop_and_resize(maybe_strided(rng, image), boxes, box_ind, crop, method, ev)
            cat = f"forward/{method}/{dtype}"
            record(
                cat,
                mine,
                theirs,
                f"shape={image.shape} crop={crop} ev={ev} styles={styles} boxes={boxes.tolist()}",
            )
            if crop[0] == 1 or crop[1] == 1:
                record(f"forward/{method}/crop-size-1", mine, theirs, "")
            if special:
                record(f"forward/{method}/inf-nan-pixels", mine, theirs, "")
            if image.shape[1] == 1 or image.shape[2] == 1:
                record(f"forward/{method}/H-or-W-1", mine, theirs, "")
            if any("huge" in s for s in styles):
                record(f"forward/{method}/huge-coordinates", mine, theirs, "")
            if any("flipped" in s for s in styles):
                record(f"forward/{method}/flipped", mine, theirs, "")
            if any("degenerate" in s for s in styles):
                record(f"forward/{method}/degenerate", mine, theirs, "")
            if boxes.size and (np.abs(boxes) > 1).any():
                record(f"forward/{method}/outside-[0,1]", mine, theirs, "")
            if boxes.shape[0] == 0 or image.shape[3] == 0:
                record(f"forward/{method}/empty-N-or-D", mine, theirs, "")
            if np.isnan(ev):
                record(f"forward/{method}/nan-extrapolation", mine, theirs, "")
        done += 1


def check_overshoot_sweep():
    """Box [0,0,1,1] (and flipped) for every (dim, crop) in 2..64 x 2..64, both axes."""
    for size in range(2, 65):
        image = np.arange(size * 3, dtype=np.float32).reshape(1, size, 3, 1)
        image_t = np.ascontiguousarray(image.transpose(0, 2, 1, 3))
        for crop in range(2, 65):
            for box in ([0, 0, 1, 1], [1, 1, 0, 0]):
                boxes = np.array([box], np.float32)
                for method in ("bilinear", "nearest"):
                    theirs = tf_forward(image, boxes, [0], (crop, 2), method, -1.0)
                    mine = K.crop_and_resize(
                        image, boxes, np.zeros(1, np.int32), (crop, 2), method, -1.0
                    )
                    record(
                        "forward/overshoot-sweep",
                        mine,
                        theirs,
                        f"H={size} crop={crop} box={box} {method}",
                    )
                    theirs = tf_forward(image_t, boxes, [0], (2, crop), method, -1.0)
                    mine = K.crop_and_resize(
                        image_t, boxes, np.zeros(1, np.int32), (2, crop), method, -1.0
                    )
                    record(
                        "forward/overshoot-sweep",
                        mine,
                        theirs,
                        f"W={size} crop={crop} box={box} {method}",
                    )


def check_rounding_ties(rng):
    """Nearest on exact halves and just below: H - 1 a power of two makes k + 0.5 exact."""
    for size in (2, 3, 5, 9, 17, 33):
        image = np.arange(size, dtype=np.float32).reshape(1, size, 1, 1) * 10 + 1
        n = size - 1
        values = []
        for k in range(n):
            for frac in (0.5, 0.49999997, 0.50000006, 0.25, 0.0):
                values.append((k + frac) / n)
        coords = np.array(values, np.float32)
        boxes = np.zeros((len(coords), 4), np.float32)
        boxes[:, 0] = boxes[:, 2] = coords
        ind = np.zeros(len(coords), np.int32)
        for crop in ((1, 1), (2, 1), (3, 2)):
            for method in ("nearest", "bilinear"):
                theirs = tf_forward(image, boxes, ind, crop, method, -5.0)
                mine = K.crop_and_resize(image, boxes, ind, crop, method, -5.0)
                record(f"forward/rounding-ties/{method}", mine, theirs, f"size={size} crop={crop}")
        # a crop that walks across halves
        boxes = np.array([[0.5 / n, 0, 1 - 0.5 / n, 0], [0.49999997 / n, 0, 1, 0]], np.float32)
        for crop in ((n, 1), (2 * n + 1, 1), (n + 1, 1)):
            theirs = tf_forward(image, boxes, [0, 0], crop, "nearest", -5.0)
            mine = K.crop_and_resize(image, boxes, np.zeros(2, np.int32), crop, "nearest", -5.0)
            record("forward/rounding-ties/nearest", mine, theirs, f"size={size} crop={crop}")


def check_notes_vectors():
    """notes §3.1, §3.3, §3.4 vectors: TF, mine and the expected value must all agree."""
    img2 = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    img3 = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    cases = []
    for dt in [
        "float32",
        "float64",
        "uint8",
        "uint16",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
    ]:
        cases.append((img2.astype(dt), [[0, 0, 1, 1]], [0], (1, 1), "bilinear", 0, [2.5]))
        cases.append((img2.astype(dt), [[0, 0, 1, 1]], [0], (1, 1), "nearest", 0, [4.0]))
    cases += [
        (img2, [[1, 1, 0, 0]], [0], (1, 1), "bilinear", 0, [2.5]),
        (img2, [[1, 1, 0, 0]], [0], (1, 1), "nearest", 0, [4.0]),
        (img2, [[0, 0, 1, 1]], [0], (3, 3), "bilinear", 0, [1, 1.5, 2, 2, 2.5, 3, 3, 3.5, 4]),
        (img2, [[0, 0, 1, 1]], [0], (3, 3), "nearest", 0, [1, 2, 2, 3, 4, 4, 3, 4, 4]),
        (img2, [[1, 1, 0, 0]], [0], (3, 3), "bilinear", 0, [4, 3.5, 3, 3, 2.5, 2, 2, 1.5, 1]),
        (img2, [[1, 1, 0, 0]], [0], (3, 3), "nearest", 0, [4, 4, 3, 4, 4, 3, 2, 2, 1]),
        (
            img3,
            [[0, 0, 1, 1], [0, 0, 0.5, 0.5]],
            [0, 0],
            (2, 2),
            "bilinear",
            0,
            [1, 3, 7, 9, 1, 2, 4, 5],
        ),
        (
            img3,
            [[0, 0, 1, 1], [0, 0, 0.5, 0.5]],
            [0, 0],
            (2, 2),
            "nearest",
            0,
            [1, 3, 7, 9, 1, 2, 4, 5],
        ),
        (
            img3,
            [[1, 1, 0, 0], [0.5, 0.5, 0, 0]],
            [0, 0],
            (2, 2),
            "bilinear",
            0,
            [9, 7, 3, 1, 5, 4, 2, 1],
        ),
        (
            img3,
            [[1, 1, 0, 0], [0.5, 0.5, 0, 0]],
            [0, 0],
            (2, 2),
            "nearest",
            0,
            [9, 7, 3, 1, 5, 4, 2, 1],
        ),
        (img2, [[-1, -1, 1, 1]], [0], (3, 3), "bilinear", -1, [-1, -1, -1, -1, 1, 2, -1, 3, 4]),
        (
            np.arange(0, 18, 2, dtype=np.float32).reshape(1, 3, 3, 1),
            [[0.5, 0.5, 1, 1]],
            [0],
            (3, 3),
            "bilinear",
            0,
            [8, 9, 10, 11, 12, 13, 14, 15, 16],
        ),
        (
            np.arange(0, 18, 2, dtype=np.float32).reshape(1, 3, 3, 1),
            [[0.5, 0.5, 1, 1]],
            [0],
            (3, 3),
            "nearest",
            0,
            [8, 10, 10, 14, 16, 16, 14, 16, 16],
        ),
        (
            np.ones((1, 58, 2, 1), np.float32),
            [[0, 0, 1, 1]],
            [0],
            (8, 1),
            "bilinear",
            -1,
            [1, 1, 1, 1, 1, 1, 1, -1],
        ),
        (
            np.arange(5, dtype=np.float32).reshape(1, 5, 1, 1),
            [[0.625, 0, 0.625, 0]],
            [0],
            (1, 1),
            "nearest",
            0,
            [3],
        ),
        (
            np.arange(5, dtype=np.float32).reshape(1, 5, 1, 1),
            [[0.125, 0, 0.125, 0]],
            [0],
            (1, 1),
            "nearest",
            0,
            [1],
        ),
        (img2, [[0, -0.5, 1, 1.5]], [0], (2, 5), "bilinear", 9, [9, 1, 1.5, 2, 9, 9, 3, 3.5, 4, 9]),
        (img2, [[0, -0.5, 1, 1.5]], [0], (2, 5), "nearest", 9, [9, 1, 2, 2, 9, 9, 3, 4, 4, 9]),
        (
            np.array([[np.inf, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1),
            [[0, 0, 1, 1]],
            [0],
            (2, 2),
            "bilinear",
            0,
            [np.nan, 2, 3, 4],
        ),
        (
            np.array([[np.nan, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1),
            [[0, 0, 1, 1]],
            [0],
            (3, 3),
            "bilinear",
            0,
            [np.nan, np.nan, 2, np.nan, np.nan, 3, 3, 3.5, 4],
        ),
        (
            np.array([0, 1, 2], np.float32).reshape(1, 1, 3, 1),
            [[-5, 0, 7, 1]],
            [0],
            (2, 3),
            "bilinear",
            -1,
            [0, 1, 2, 0, 1, 2],
        ),
        (
            np.array([0, 1, 2], np.float32).reshape(1, 3, 1, 1),
            [[0, -3, 1, 4]],
            [0],
            (3, 2),
            "bilinear",
            -1,
            [0, 0, 1, 1, 2, 2],
        ),
        (
            np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1),
            [[0.25, 0.75, 0.25, 0.75]],
            [0],
            (2, 2),
            "bilinear",
            0,
            [3, 3, 3, 3],
        ),
        (
            np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1),
            [[0, 0, 0.5, 1]],
            [0],
            (1, 1),
            "bilinear",
            0,
            [2.5],
        ),
        (
            np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1),
            [[1, 1, 1.5, 1.5]],
            [0],
            (1, 1),
            "bilinear",
            -2,
            [-2],
        ),
        (
            np.arange(24, dtype=np.float32).reshape(2, 2, 3, 2),
            [[0, 0, 1, 1], [0.5, 0, 0.5, 1]],
            [1, 0],
            (2, 3),
            "bilinear",
            0,
            list(range(12, 24)) + [3, 4, 5, 6, 7, 8] * 2,
        ),
        (
            np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1),
            [[-0.0, -0.0, 1, 1]],
            [0],
            (2, 2),
            "bilinear",
            -1,
            [0, 1, 2, 3],
        ),
        (
            np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1),
            [[-1e-7, 0, 1, 1]],
            [0],
            (2, 2),
            "bilinear",
            -1,
            [-1, -1, 2, 3],
        ),
    ]
    for image, boxes, ind, crop, method, ev, expected in cases:
        boxes = np.array(boxes, np.float32)
        ind = np.array(ind, np.int32)
        theirs = tf_forward(image, boxes, ind, crop, method, float(ev))
        mine = K.crop_and_resize(image, boxes, ind, crop, method, float(ev))
        record("forward/notes-vectors", mine, theirs, f"{boxes.tolist()} {crop} {method}")
        exp = np.array(expected, np.float32)
        ok = np.array_equal(mine.reshape(-1), exp, equal_nan=True)
        results["forward/notes-vectors-match-expected"][0] += 1
        results["forward/notes-vectors-match-expected"][1] += ok
        results["forward/notes-vectors-match-expected"][2] += ok
        results["forward/notes-vectors-match-expected"][3] += ok
        if not ok:
            failures.append(
                f"expected mismatch {boxes.tolist()} {crop} {method}: {mine.ravel()} vs {exp}"
            )
    # TestWithSharding: (1,999,999,1) value = column index, crop 500x500
    image = np.tile(np.arange(999, dtype=np.float32), (999, 1)).reshape(1, 999, 999, 1)
    boxes = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], np.float32)
    theirs = tf_forward(image, boxes, [0, 0], (500, 500), "bilinear", 0.0)
    mine = K.crop_and_resize(image, boxes, np.zeros(2, np.int32), (500, 500), "bilinear", 0.0)
    record("forward/notes-vectors", mine, theirs, "sharding test")


def check_big_forward(rng):
    """A few detection-sized cases (deep maps, many boxes)."""
    for dtype in ("float32", "uint8", "float16"):
        image = random_image(rng, (2, 40, 37, 64), dtype)
        boxes, _ = random_boxes(rng, 100, 40, 37)
        ind = rng.integers(0, 2, 100).astype(np.int32)
        for method in ("bilinear", "nearest"):
            theirs = tf_forward(image, boxes, ind, (14, 14), method, 0.0)
            mine = K.crop_and_resize(maybe_strided(rng, image), boxes, ind, (14, 14), method, 0.0)
            record("forward/large", mine, theirs, dtype)


def random_grads(rng, shape):
    kind = rng.integers(0, 4)
    if kind == 0:
        g = rng.standard_normal(shape)
    elif kind == 1:
        g = rng.uniform(-1e-3, 1e-3, shape)
    elif kind == 2:
        g = rng.standard_normal(shape) * np.exp(rng.uniform(-15, 15, shape))
    else:
        g = rng.integers(-3, 4, shape).astype(np.float64)
    return g.astype(np.float32)


def check_grad_image(rng, count):
    done = 0
    while done < count:
        height, width = random_dim(rng), random_dim(rng)
        depth = int(rng.choice([0, 1, 2, 3]))
        n = int(rng.choice([0, 1, 2, 4, 8]))
        batch = 0 if (n == 0 and rng.random() < 0.3) else int(rng.integers(1, 3))
        crop = (random_crop_dim(rng), random_crop_dim(rng))
        if rng.random() < 0.2:  # upsampling: many contributions per pixel
            height, width, crop = int(rng.integers(1, 4)), int(rng.integers(1, 4)), (17, 19)
        boxes, styles = random_boxes(rng, n, height, width)
        if not tf_safe(boxes, height, width, crop):
            continue
        box_ind = rng.integers(0, max(batch, 1), n).astype(np.int32)
        grads = random_grads(rng, (n, *crop, depth))
        if rng.random() < 0.1 and grads.size:
            grads.reshape(-1)[rng.integers(0, grads.size)] = rng.choice([np.inf, np.nan, 7e4])
        shape = (batch, height, width, depth)
        for dtype in GRAD_DTYPES:
            for method in ("bilinear", "nearest"):
                theirs = tf_grad_image(grads, boxes, box_ind, shape, method, dtype)
                mine = K.crop_and_resize_grad_image(
                    maybe_strided(rng, grads), boxes, box_ind, ImageShape(*shape), method, dtype
                )
                record(
                    f"grad_image/{method}/{dtype}",
                    mine,
                    theirs,
                    f"shape={shape} crop={crop} styles={styles} boxes={boxes.tolist()}",
                )
        done += 1


def check_grad_boxes(rng, count):
    done = 0
    while done < count:
        dtype = DTYPES[done % len(DTYPES)]
        image, boxes, box_ind, crop, styles, special = random_forward_case(rng, dtype)
        if rng.random() < 0.2:
            crop = (1, 1) if rng.random() < 0.5 else (1, int(rng.integers(2, 20)))
        if not tf_safe(boxes, image.shape[1], image.shape[2], crop):
            continue
        grads = random_grads(rng, (boxes.shape[0], *crop, image.shape[3]))
        theirs = tf_grad_boxes(grads, image, boxes, box_ind)
        mine = K.crop_and_resize_grad_boxes(
            maybe_strided(rng, grads), maybe_strided(rng, image), boxes, box_ind
        )
        info = f"shape={image.shape} crop={crop} styles={styles} boxes={boxes.tolist()}"
        record(f"grad_boxes/{dtype}", mine, theirs, info)
        if crop[0] == 1 or crop[1] == 1:
            record("grad_boxes/crop-size-1", mine, theirs, info)
        if special:
            record("grad_boxes/inf-nan-pixels", mine, theirs, info)
        done += 1


def check_grad_vectors():
    """notes §2.4."""
    img2 = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    img3 = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    g4 = np.arange(1, 5, dtype=np.float32).reshape(1, 2, 2, 1)
    one = np.zeros(1, np.int32)
    b01 = np.array([[0, 0, 1, 1]], np.float32)
    bq = np.array([[0.25, 0.25, 0.75, 0.75]], np.float32)
    cases = [
        ("image", (np.ones((1, 3, 3, 1), np.float32), b01, (1, 2, 2, 1), "bilinear"), [2.25] * 4),
        ("image", (np.ones((1, 3, 3, 1), np.float32), b01, (1, 2, 2, 1), "nearest"), [1, 2, 2, 4]),
        (
            "image",
            (g4, bq, (1, 3, 3, 1), "bilinear"),
            [0.25, 0.75, 0.5, 1.0, 2.5, 1.5, 0.75, 1.75, 1.0],
        ),
        ("boxes", (np.ones((1, 3, 3, 1), np.float32), img2, b01), [3.0, 1.5, 3.0, 1.5]),
        ("boxes", (g4, img3, bq), [18.0, 8.0, 42.0, 12.0]),
        ("boxes", (np.ones((1, 1, 1, 1), np.float32), img2, b01), [1.0, 0.5, 1.0, 0.5]),
    ]
    for kind, args, expected in cases:
        if kind == "image":
            grads, boxes, shape, method = args
            for dtype in GRAD_DTYPES:
                theirs = tf_grad_image(grads, boxes, one, shape, method, dtype)
                mine = K.crop_and_resize_grad_image(
                    grads, boxes, one, ImageShape(*shape), method, dtype
                )
                record("grad/notes-vectors", mine, theirs, f"{args}")
                ok = np.array_equal(mine.reshape(-1), np.array(expected, dtype))
                results["grad/notes-vectors-match-expected"][0] += 1
                results["grad/notes-vectors-match-expected"][1] += ok
                results["grad/notes-vectors-match-expected"][2] += ok
                results["grad/notes-vectors-match-expected"][3] += ok
        else:
            grads, image, boxes = args
            theirs = tf_grad_boxes(grads, image, boxes, one)
            mine = K.crop_and_resize_grad_boxes(grads, image, boxes, one)
            record("grad/notes-vectors", mine, theirs, f"{args}")
            ok = np.array_equal(mine.reshape(-1), np.array(expected, np.float32))
            results["grad/notes-vectors-match-expected"][0] += 1
            results["grad/notes-vectors-match-expected"][1] += ok
            results["grad/notes-vectors-match-expected"][2] += ok
            results["grad/notes-vectors-match-expected"][3] += ok


def check_big_grads(rng):
    """Deterministic-test-like sizes: 64 boxes onto 16 images, crop 128 (image_grad_d9m_test)."""
    image = rng.uniform(-1, 1, (16, 64, 64, 1)).astype(np.float32)
    boxes = rng.uniform(0, 1.01, (64, 4)).astype(np.float32)
    ind = rng.integers(0, 16, 64).astype(np.int32)
    grads = rng.uniform(-0.001, 0.001, (64, 128, 128, 1)).astype(np.float32)
    for dtype in GRAD_DTYPES:
        for method in ("bilinear", "nearest"):
            theirs = tf_grad_image(grads, boxes, ind, image.shape, method, dtype)
            mine = K.crop_and_resize_grad_image(
                grads, boxes, ind, ImageShape(*image.shape), method, dtype
            )
            record("grad_image/large", mine, theirs, f"{dtype} {method}")
        theirs = tf_grad_boxes(grads, image.astype(dtype), boxes, ind)
        mine = K.crop_and_resize_grad_boxes(grads, image.astype(dtype), boxes, ind)
        record("grad_boxes/large", mine, theirs, dtype)
    # many boxes onto one small image: long float16 accumulation chains
    boxes = rng.uniform(-0.2, 1.2, (200, 4)).astype(np.float32)
    grads = rng.standard_normal((200, 9, 9, 3)).astype(np.float32)
    for dtype in GRAD_DTYPES:
        for method in ("bilinear", "nearest"):
            theirs = tf_grad_image(
                grads, boxes, np.zeros(200, np.int32), (1, 4, 4, 3), method, dtype
            )
            mine = K.crop_and_resize_grad_image(
                grads, boxes, np.zeros(200, np.int32), ImageShape(1, 4, 4, 3), method, dtype
            )
            record("grad_image/long-chains", mine, theirs, f"{dtype} {method}")


def check_dense_specials(rng, count):
    """Images / grads with many inf, -inf and NaN values, so that different NaNs meet.

    Reported separately: NaN positions must agree (value-equal); the sign bit of a NaN made by
    combining two different NaNs depends on the operand order the C++ compiler chose.
    """
    for i in range(count):
        dtype = ["float16", "float32", "float64"][i % 3]
        height, width, depth = (
            int(rng.integers(2, 5)),
            int(rng.integers(2, 5)),
            int(rng.integers(1, 3)),
        )
        image = rng.standard_normal((1, height, width, depth)).astype(dtype)
        mask = rng.random(image.shape) < 0.3
        image[mask] = rng.choice([np.inf, -np.inf, np.nan], size=int(mask.sum()))
        boxes, _ = random_boxes(rng, 3, height, width)
        crop = (random_crop_dim(rng), random_crop_dim(rng))
        if not tf_safe(boxes, height, width, crop):
            continue
        ind = np.zeros(3, np.int32)
        for method in ("bilinear", "nearest"):
            theirs = tf_forward(image, boxes, ind, crop, method, float("nan"))
            mine = K.crop_and_resize(image, boxes, ind, crop, method, float("nan"))
            record(f"dense-specials/forward/{method}", mine, theirs, "")
        grads = rng.standard_normal((3, *crop, depth)).astype(np.float32)
        gmask = rng.random(grads.shape) < 0.2
        grads[gmask] = rng.choice([np.inf, -np.inf, np.nan], size=int(gmask.sum()))
        theirs = tf_grad_boxes(grads, image, boxes, ind)
        mine = K.crop_and_resize_grad_boxes(grads, image, boxes, ind)
        record("dense-specials/grad_boxes", mine, theirs, "")
        for method in ("bilinear", "nearest"):
            theirs = tf_grad_image(grads, boxes, ind, image.shape, method, dtype)
            mine = K.crop_and_resize_grad_image(
                grads, boxes, ind, ImageShape(*image.shape), method, dtype
            )
            record(f"dense-specials/grad_image/{method}", mine, theirs, "")


def tiny_values(rng, shape, dtype):
    """Normal, tiny-normal, near-FLT_MIN and subnormal (in float32) values, both signs."""
    choices = np.array(
        [1.0, 0.5, 3e-38, 1.1754944e-38, 1.1754942e-38, 1e-39, 1e-40, 1e-45, 1e-30, 1e-20, 0.0]
    )
    v = rng.choice(choices, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    v = v * rng.uniform(0.5, 2.0, size=shape)
    return v.astype(dtype)


def check_denormals(rng, count):
    """Flush-to-zero / denormals-are-zero: subnormal and tiny pixels, boxes, grads."""
    done = 0
    while done < count:
        dtype = ["float32", "float64", "float16", "uint8", "float32", "float64"][done % 6]
        height, width = random_dim(rng), random_dim(rng)
        depth = int(rng.choice([1, 2]))
        n = int(rng.choice([1, 2, 3]))
        crop = (random_crop_dim(rng), random_crop_dim(rng))
        if dtype == "uint8":
            image = rng.integers(0, 255, (1, height, width, depth)).astype(np.uint8)
        else:
            image = tiny_values(rng, (1, height, width, depth), dtype)
            if rng.random() < 0.5:
                image = (image * 1e30).astype(dtype) if dtype != "float16" else image
        boxes, _ = random_boxes(rng, n, height, width)
        mask = rng.random(boxes.shape) < 0.4
        boxes[mask] = tiny_values(rng, int(mask.sum()), np.float32)
        if not tf_safe(boxes, height, width, crop):
            continue
        ind = np.zeros(n, np.int32)
        ev = float(np.float32(rng.choice([0.0, 1e-40, -1e-45, -1.0])))
        for method in ("bilinear", "nearest"):
            theirs = tf_forward(image, boxes, ind, crop, method, ev)
            mine = K.crop_and_resize(image, boxes, ind, crop, method, ev)
            record(
                f"denormals/forward/{method}",
                mine,
                theirs,
                f"{dtype} {image.shape} crop={crop} boxes={boxes.tolist()} ev={ev}",
            )
        grads = tiny_values(rng, (n, *crop, depth), np.float32)
        if rng.random() < 0.5:
            grads = (grads * np.float32(rng.choice([1.0, 1e-10, 1e10]))).astype(np.float32)
        for gdtype in GRAD_DTYPES:
            for method in ("bilinear", "nearest"):
                theirs = tf_grad_image(grads, boxes, ind, image.shape, method, gdtype)
                mine = K.crop_and_resize_grad_image(
                    grads, boxes, ind, ImageShape(*image.shape), method, gdtype
                )
                record(
                    f"denormals/grad_image/{method}/{gdtype}",
                    mine,
                    theirs,
                    f"{image.shape} crop={crop} boxes={boxes.tolist()}",
                )
        theirs = tf_grad_boxes(grads, image, boxes, ind)
        mine = K.crop_and_resize_grad_boxes(grads, image, boxes, ind)
        record(
            "denormals/grad_boxes",
            mine,
            theirs,
            f"{dtype} {image.shape} crop={crop} boxes={boxes.tolist()}",
        )
        done += 1


class _Backend:
    """The three kernels of :mod:`cropcore_numpy.kernels`, run through cropcore on ``name``."""

    def __init__(self, name: str) -> None:
        import cropcore

        self.cropcore, self.name = cropcore, name

    def crop_and_resize(self, image, boxes, box_indices, crop_size, method, extrapolation_value):
        return self.cropcore.crop_and_resize(
            image, boxes, box_indices, crop_size, method, extrapolation_value, backend=self.name
        )

    def crop_and_resize_grad_image(self, grads, boxes, box_indices, image_shape, method, dtype):
        return self.cropcore.crop_and_resize_grad_image(
            grads, boxes, box_indices, tuple(image_shape), method, dtype=dtype, backend=self.name
        )

    def crop_and_resize_grad_boxes(self, grads, image, boxes, box_indices):
        return self.cropcore.crop_and_resize_grad_boxes(
            grads, image, boxes, box_indices, backend=self.name
        )

    def __getattr__(self, name: str):  # helpers such as _coordinates: the reference's
        return getattr(_REFERENCE, name)


def main():
    global K
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument(
        "--backend", help="compare this cropcore backend (default: the reference kernels, direct)"
    )
    args = parser.parse_args()
    if args.backend:
        K = _Backend(args.backend)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    check_notes_vectors()
    check_grad_vectors()
    check_rounding_ties(rng)
    check_overshoot_sweep()
    check_forward_random(rng, 1800 * args.scale)
    check_big_forward(rng)
    check_grad_image(rng, 500 * args.scale)
    check_grad_boxes(rng, 1800 * args.scale)
    check_big_grads(rng)
    check_dense_specials(rng, 300 * args.scale)
    check_denormals(rng, 600 * args.scale)
    width = max(len(k) for k in results)
    print(f"{'category':<{width}}  cases  value-equal  bit-equal  bit-equal-but-NaN-sign")
    for key in sorted(results):
        c, v, b, n = results[key]
        print(f"{key:<{width}}  {c:5d}  {v:11d}  {b:9d}  {n:9d}")
    print(f"elapsed {time.time() - t0:.1f}s")
    for f in failures:
        print("FAIL", f)
    bad = sum(c - n for c, v, b, n in results.values())
    nan_only = sum(n - b for c, v, b, n in results.values())
    print(f"{bad} cases differ beyond NaN sign/payload; {nan_only} differ only in NaN sign/payload")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
