"""ONNX Runtime's CPU ``RoiAlign`` as a cropcore backend plugin (``onnxruntime``), roi_align only,
for certifying the conformance suite's roi-align category against ONNX Runtime itself
(tests/test_onnxruntime_plugin.py).

A third party's plugin as docs/plugins.md describes it: NumPy arrays in and out, one op hook,
ONNX Runtime imported when the hook first runs. ``aligned`` is ONNX's
``coordinate_transformation_mode`` (``half_pixel`` when true), ``sampling_ratio <= 0`` is ONNX's
0, and ``spatial_scale`` is a float32 attribute. ONNX Runtime's CPU kernel takes float32 and
float64 images, NCHW; NHWC calls are transposed around it. It has no gradient.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from cropcore.hookspecs import BackendInfo, hookimpl


@hookimpl
def cropcore_backend_info() -> BackendInfo:
    return BackendInfo(
        name="onnxruntime",
        array_library="numpy",
        devices=("cpu",),
        dtypes=("float32", "float64"),
        requires=("onnxruntime", "onnx"),
        description="ONNX Runtime's CPU RoiAlign (opset 16), one thread",
    )


@functools.lru_cache(maxsize=64)
def _session(dtype: str, size: tuple[int, int], scale: float, ratio: int, aligned: bool, mode: str):
    import onnxruntime
    from onnx import TensorProto, helper

    kind = TensorProto.DOUBLE if dtype == "float64" else TensorProto.FLOAT
    node = helper.make_node(
        "RoiAlign",
        ["X", "rois", "batch_indices"],
        ["Y"],
        mode=mode,
        output_height=size[0],
        output_width=size[1],
        sampling_ratio=max(ratio, 0),
        spatial_scale=scale,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )
    graph = helper.make_graph(
        [node],
        "roi_align",
        [
            helper.make_tensor_value_info("X", kind, None),
            helper.make_tensor_value_info("rois", kind, None),
            helper.make_tensor_value_info("batch_indices", TensorProto.INT64, None),
        ],
        [helper.make_tensor_value_info("Y", kind, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


@hookimpl
def cropcore_roi_align(call: Any) -> np.ndarray:
    image = np.asarray(call.image, call.image.dtype.newbyteorder("="))
    if not call.channels_first:
        image = np.moveaxis(image, 3, 1)
    session = _session(
        image.dtype.name,
        tuple(call.output_size),
        float(np.float32(call.spatial_scale)),
        int(call.sampling_ratio),
        bool(call.aligned),
        call.mode,
    )
    feeds = {
        "X": np.ascontiguousarray(image),
        "rois": np.ascontiguousarray(call.boxes, image.dtype),
        "batch_indices": np.asarray(call.box_indices, np.int64),
    }
    out = session.run(None, feeds)[0]
    return out if call.channels_first else np.ascontiguousarray(np.moveaxis(out, 1, 3))
