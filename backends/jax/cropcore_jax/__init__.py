"""cropcore's JAX backend: TensorFlow's ``crop_and_resize`` for ``jax.Array``, under jit, grad and vmap.

Registered as the plugin ``jax`` through the ``cropcore.backends`` entry point, like any
third-party backend; installed by ``pip install "cropcore[jax]"``. Importing this module does not
import jax: the hooks import :mod:`cropcore_jax.ops` the first time they run.

- :mod:`cropcore_jax.kernels`: the three ops in ``jax.numpy``/``jax.lax``, jitted with their static
  arguments, bit-identical to TensorFlow's CPU kernel on XLA:CPU (docs/jax.md);
- :mod:`cropcore_jax.ops`: ``crop_and_resize`` as a ``jax.custom_vjp`` whose backward rule is the
  two gradient kernels, and the functions the hooks call;
- :mod:`cropcore_jax.roi_align`: ``roi_align`` (torchvision's and ONNX Runtime's) and its image
  gradient, the kernels and the ``jax.custom_vjp`` that joins them, bit-identical to the
  reference backend on XLA:CPU.

``cropcore.crop_and_resize`` and the other public functions take ``jax.Array`` inputs (and
tracers: inside ``jax.jit``, ``jax.grad``, ``jax.vmap``) and return ``jax.Array`` results on the
input's device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cropcore import memory
from cropcore.hookspecs import IMAGE_DTYPES, BackendInfo, hookimpl

if TYPE_CHECKING:
    from cropcore.hookspecs import (
        CropAndResizeCall,
        GradBoxesCall,
        GradImageCall,
        RoiAlignCall,
        RoiAlignGradImageCall,
    )

__all__ = [
    "cropcore_backend_check",
    "cropcore_backend_info",
    "cropcore_backend_peak_bytes",
    "cropcore_conformance_tolerances",
    "cropcore_crop_and_resize",
    "cropcore_crop_and_resize_grad_boxes",
    "cropcore_crop_and_resize_grad_image",
    "cropcore_roi_align",
    "cropcore_roi_align_grad_image",
]


@hookimpl
def cropcore_backend_info() -> BackendInfo:
    return BackendInfo(
        name="jax",
        array_library="jax",
        devices=("cpu", "cuda", "rocm", "tpu"),
        dtypes=IMAGE_DTYPES,
        requires=("jax",),
        install_hint='pip install "cropcore[jax]"',
        description=(
            "jax.Array on any XLA device, under jit, grad (TF's gradients) and vmap; bit-exact "
            "with TensorFlow's CPU kernel on XLA:CPU"
        ),
        # BackendInfo.autograd is about torch's autograd (which tensors it may take); jax.grad
        # differentiates this backend by tracing it, which needs no declaration.
        autograd=False,
        # The kernels clamp every index before a gather and give NaN for a bad box index (an
        # IndexError where the indices are concrete on the CPU); non-finite boxes are outside.
        unchecked_values=True,
    )


@hookimpl
def cropcore_backend_check() -> str | None:
    import jax

    version = tuple(int(part) for part in jax.__version__.split(".")[:2] if part.isdigit())
    if version < (0, 7):  # jax.enable_x64 as a context manager
        return f"jax {jax.__version__} is too old: cropcore's jax backend needs jax >= 0.7"
    return None


def _ops() -> Any:
    import cropcore_jax.ops

    return cropcore_jax.ops


@hookimpl
def cropcore_crop_and_resize(call: CropAndResizeCall) -> Any:
    return _ops().run_crop_and_resize(call)


@hookimpl
def cropcore_crop_and_resize_grad_image(call: GradImageCall) -> Any:
    return _ops().run_grad_image(call)


@hookimpl
def cropcore_crop_and_resize_grad_boxes(call: GradBoxesCall) -> Any:
    return _ops().run_grad_boxes(call)


def _roi_align() -> Any:
    import cropcore_jax.roi_align

    return cropcore_jax.roi_align


@hookimpl
def cropcore_roi_align(call: RoiAlignCall) -> Any:
    return _roi_align().run_roi_align(call)


@hookimpl
def cropcore_roi_align_grad_image(call: RoiAlignGradImageCall) -> Any:
    return _roi_align().run_roi_align_grad_image(call)


@hookimpl
def cropcore_backend_peak_bytes(call: Any) -> int:
    # XLA fuses the elementwise arithmetic, but the gathered corners, the image gradient's
    # per-sample contributions and targets and the box gradient's terms are materialised; counted
    # as the NumPy backend counts them. Only host memory counts: nothing on a device.
    import jax

    anchor = call.image if hasattr(call, "image") else call.grads
    if isinstance(anchor, jax.core.Tracer):  # under jit: where the computation will run
        on_cpu = jax.default_backend() == "cpu"
    else:
        on_cpu = all(d.platform == "cpu" for d in anchor.devices())
    if not on_cpu:
        return 0
    if call.op in ("roi_align", "roi_align_grad_image"):
        return _roi_peak_bytes(call)
    samples = call.boxes.shape[0] * call.crop_size[0] * call.crop_size[1]
    tables = 64 * call.boxes.shape[0] * (call.crop_size[0] + call.crop_size[1])
    if call.op == "crop_and_resize":
        return 5 * memory.nbytes(call.output_shape, "float32") + tables
    grads = samples * call.image_shape.depth
    if call.op == "crop_and_resize_grad_image":
        return memory.nbytes(call.output_shape, call.dtype) + 48 * grads + 32 * samples + tables
    return 48 * grads + tables


def _roi_peak_bytes(call: Any) -> int:
    # roi_align: the image in the compute dtype, the result and about ten result-sized arrays
    # (four gathers, their products, the running value); its gradient: the image-sized sums and
    # its copy, and one step's (sample, corner, channel) entries, at most 2**22 of them or one
    # box's, each value and index with their temporaries (about 32 bytes).
    shape = call.image_shape
    image = memory.nbytes(tuple(shape), "float64")
    bins = call.num_boxes * call.output_size[0] * call.output_size[1]
    if call.op == "roi_align":
        return image + 12 * memory.nbytes((bins, shape.depth), "float64") + 64 * bins
    grid_h, grid_w = _roi_align().grid_bound(call)
    one_box = call.output_size[0] * call.output_size[1] * grid_h * grid_w * 4 * shape.depth
    entries = max(min(1 << 22, one_box * call.num_boxes), one_box)
    return 3 * image + 32 * entries + 64 * bins


@hookimpl
def cropcore_conformance_tolerances() -> dict[str, str]:
    # XLA:CPU: every case bit-exact (flush-to-zero, no FMA, scatters applied in order). Other
    # platforms contract multiplies and adds and scatter atomically: the GPU classes.
    import jax

    if jax.default_backend() == "cpu":
        return {"*": "exact"}
    return {"*/grad_image/*": "reordered-sums", "*/grad_boxes/*": "reordered-sums", "*": "fma"}
