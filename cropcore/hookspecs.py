"""The backend contract: what a cropcore backend plugin provides.

A backend is a Python module registered under the entry-point group ``cropcore.backends``::

    [project.entry-points."cropcore.backends"]
    mybackend = "my_package.cropcore_plugin"

cropcore loads the module when it lists backends and registers it with pluggy, which checks every
hook implementation's signature against the specifications below. Rules for the module:

- **Importing it must be cheap and must not import the framework it wraps** (torch, cupy, numba,
  ...). Import those inside the op hooks, or in :func:`cropcore_backend_check`. Listing backends
  imports every plugin module; a framework loads only when its backend first runs.
- :func:`cropcore_backend_info` is required; so is at least one op hook. An op the backend does not
  implement is simply not offered by it, except ``crop2d``, a slice, which cropcore runs itself for
  a backend without that hook.
- Op hooks receive one *call* object from :mod:`cropcore.spec`, already validated and canonical:
  ``boxes`` float32 ``(num_boxes, 4)`` and finite, ``box_indices`` int32 in ``[0, batch)``,
  ``crop_size`` two positive ints, ``method`` one of the allowed strings, ``data_format`` either
  ``"channels_last"`` (NHWC) or ``"channels_first"`` (NCHW), and every array already converted to the
  backend's ``array_library`` (on the image's device when the image is of that library) -- except
  arrays of a library listed in ``native_libraries``, which arrive as the caller gave them. Hooks
  compute; they do not re-validate, and must not read outside the arrays they are given.
- An op hook returns an array of its ``array_library`` with the call's ``output_shape`` and
  ``output_dtype``; cropcore moves it back to the caller's library and device.
- A backend refuses a call it cannot run by returning a reason from
  :func:`cropcore_backend_declines` (it is then skipped by automatic selection, and named selection
  raises :class:`cropcore.errors.BackendDeclinedError` with that reason).
- Devices: automatic selection only picks a backend whose ``devices`` include the image's device
  type. A backend named explicitly runs whatever the device: cropcore moves the arrays to it
  (for example a CUDA tensor is copied to the host for a CPU backend) and the result back.

Every hook is called on one chosen plugin only (cropcore does the selection, pluggy the registration
and signature checking), so the hook options below matter only to pluggy's bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pluggy

from cropcore.calls import (
    IMAGE_DTYPES,
    METHODS,
    Crop2DCall,
    CropAndResizeCall,
    GradBoxesCall,
    GradImageCall,
    ImageShape,
    RoiAlignCall,
    RoiAlignGradImageCall,
)

__all__ = [
    "IMAGE_DTYPES",
    "METHODS",
    "BackendInfo",
    "Crop2DCall",
    "CropAndResizeCall",
    "GradBoxesCall",
    "GradImageCall",
    "ImageShape",
    "RoiAlignCall",
    "RoiAlignGradImageCall",
    "hookimpl",
    "hookspec",
]

hookspec = pluggy.HookspecMarker("cropcore")
#: Decorate a backend module's functions with this to implement the hooks below.
hookimpl = pluggy.HookimplMarker("cropcore")


@dataclass(frozen=True)
class BackendInfo:
    """What a backend says about itself (returned by its ``cropcore_backend_info`` hook).

    Attributes:
        name: what users pass as ``backend=``; lower case, unique.
        array_library: the library whose arrays its kernels take and return
            (``"numpy"``, ``"torch"``, ``"cupy"``, ...).
        aliases: other names accepted for ``backend=`` (the CuPy backend has ``"cuda"``).
        devices: device types it computes on (``"cpu"``, ``"cuda"``).
        dtypes: image dtypes it accepts (NumPy names).
        methods: sampling methods it implements.
        requires: modules that must be importable (checked without importing them); the version
            shown is the first one's distribution version unless ``version`` is given.
        install_hint: how to install what is missing, e.g. ``pip install "cropcore[numba]"``.
        version: a version string to show; empty means the version of ``requires[0]``.
        description: one line for ``cropcore backends``.
        native_libraries: array libraries it takes without conversion, besides ``array_library``
            (for example a NumPy backend that also reads torch CPU tensors through DLPack).
        autograd: whether its results carry gradients through the framework's autograd.
        unchecked_values: whether its kernels are safe on box values cropcore did not read
            (``call.values_checked`` is ``False``: traced or device-resident boxes): no read
            outside the image whatever the values, and the documented results for bad ones
            (docs/decisions.md, "Unchecked values"). Without it, such a call is checked on the
            host first (a device synchronisation) or, when traced, refused.
    """

    name: str
    array_library: str = "numpy"
    aliases: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = IMAGE_DTYPES
    methods: tuple[str, ...] = METHODS
    requires: tuple[str, ...] = ()
    install_hint: str = ""
    version: str = ""
    description: str = ""
    native_libraries: tuple[str, ...] = ()
    autograd: bool = False
    unchecked_values: bool = False


@hookspec
def cropcore_backend_info() -> BackendInfo:
    """Describe the backend. **Required.** Must not import a framework.

    Return a :class:`cropcore.BackendInfo`: its ``name`` (what users pass as ``backend=``),
    ``aliases``, the ``array_library`` its kernels take and return (``"numpy"``, ``"torch"``,
    ``"cupy"``), the ``devices`` it computes on, the ``dtypes`` and ``methods`` it supports, the
    modules it ``requires`` (checked with ``importlib.util.find_spec``, which imports nothing), an
    ``install_hint`` shown when they are missing, and a ``version`` string.
    """


@hookspec
def cropcore_backend_check() -> str | None:
    """Check that the backend can run here; return ``None`` if it can, else the reason it cannot.

    Optional. Called once, the first time the backend is probed or selected, never while merely
    listing. This is the place to import the framework and look for a device (e.g. "no CUDA
    device: cudaErrorNoDevice"). Raising an exception counts as unavailable, with the exception as
    the reason.
    """


@hookspec
def cropcore_backend_declines(call: Any) -> str | None:
    """Return a reason if this backend cannot run ``call``, else ``None``.

    Optional. Called before every dispatch to this backend, so it must be fast. ``call`` is the
    validated call *before* conversion: its arrays are still in the caller's library. ``dtypes``,
    ``methods`` and ``devices`` from :func:`cropcore_backend_info` are already checked by cropcore;
    this hook is for anything finer (a size limit, an unsupported combination).
    """


@hookspec
def cropcore_backend_peak_bytes(call: Any) -> int:
    """Bytes of host memory this backend needs at its peak to run ``call``, its result included.

    Optional; without it, a backend that computes on the CPU is taken to need the result's bytes,
    one that computes on a device none. Called after selection, before the op hook, with the call
    as the op hook will receive it, for calls whose arrays and result total more than
    :data:`cropcore.memory.ASK_BYTES` (1 MiB); it must be fast and must not allocate. cropcore refuses the
    call with :class:`cropcore.errors.OutputTooLargeError` when the peak exceeds the memory
    available (or ``CROPCORE_MAX_OUTPUT_BYTES``), so count every temporary as large as the result.
    """


@hookspec
def cropcore_crop_and_resize(call: CropAndResizeCall) -> Any:
    """TensorFlow's ``CropAndResize``.

    ``call.image``: ``(batch, height, width, depth)`` (NHWC) or ``(batch, depth, height, width)``
    (NCHW), any dtype in :data:`cropcore.spec.IMAGE_DTYPES`. ``call.boxes``: float32
    ``(num_boxes, 4)`` normalised ``[y1, x1, y2, x2]``. ``call.box_indices``: int32
    ``(num_boxes,)``. ``call.crop_size``: ``(crop_height, crop_width)``. ``call.method``:
    ``"bilinear"`` or ``"nearest"``. ``call.extrapolation_value``: a float32-exact Python float.

    Returns float32 ``(num_boxes, crop_height, crop_width, depth)`` (NHWC) or
    ``(num_boxes, depth, crop_height, crop_width)`` (NCHW). The reference semantics are those of
    ``cropcore_numpy``; see docs/semantics.md.
    """


@hookspec
def cropcore_crop_and_resize_grad_image(call: GradImageCall) -> Any:
    """TensorFlow's ``CropAndResizeGradImage``: the gradient of crop_and_resize w.r.t. the image.

    ``call.grads``: float32, the shape of crop_and_resize's result. ``call.boxes``,
    ``call.box_indices``, ``call.method`` as for the forward op. ``call.image_shape``: the image's
    :class:`cropcore.spec.ImageShape`. ``call.dtype``: ``"float16"``, ``"float32"`` or
    ``"float64"``, the dtype of the result, which is also the dtype TensorFlow accumulates in.

    Returns ``call.dtype`` with shape ``call.output_shape`` (the image's shape). Samples that fall
    outside the image contribute nothing.
    """


@hookspec
def cropcore_crop_and_resize_grad_boxes(call: GradBoxesCall) -> Any:
    """TensorFlow's ``CropAndResizeGradBoxes``: the gradient of (bilinear) crop_and_resize w.r.t. the boxes.

    ``call.grads``: float32, the shape of crop_and_resize's result. ``call.image``: the forward
    op's image (any dtype in :data:`cropcore.spec.IMAGE_DTYPES`). ``call.boxes``,
    ``call.box_indices`` as for the forward op; ``call.method`` is always ``"bilinear"``.

    Returns float32 ``(num_boxes, 4)``.
    """


@hookspec
def cropcore_crop2d(call: Crop2DCall) -> Any:
    """Keras's ``Cropping2D``: ``call.x[call.slices]``.

    Optional: without it cropcore slices ``call.x`` itself (a view, in the caller's library and
    on its device), which is what every built-in backend wants.

    ``call.x``: 4-D, any dtype. ``call.cropping``: ``((top, bottom), (left, right))``, already
    checked to leave at least one row and one column. Returns an array of ``call.x``'s dtype with
    shape ``call.output_shape`` (a view where the library makes one).
    """


@hookspec
def cropcore_roi_align(call: RoiAlignCall) -> Any:
    """torchvision's ``roi_align`` and ONNX's ``RoiAlign``.

    Optional, as every op hook: a backend implements the ops it has kernels for.

    ``call.image``: ``(batch, depth, height, width)`` (NCHW, ``call.data_format ==
    "channels_first"``) or NHWC; float16, float32 or float64. ``call.boxes``: ``(num_boxes, 4)``
    rows ``[x1, y1, x2, y2]`` in input pixels, in the compute dtype (float64 for a float64
    image, else float32). ``call.box_indices``: int32 ``(num_boxes,)``. ``call.output_size``:
    ``(pooled_height, pooled_width)``; ``call.spatial_scale`` (float), ``call.sampling_ratio``
    (int, ``<= 0`` adaptive), ``call.aligned`` (bool), ``call.mode`` (``"avg"`` or ``"max"``).

    Returns the image's dtype with shape ``call.output_shape``: ``(num_boxes, depth,
    pooled_height, pooled_width)`` (NCHW) or ``(num_boxes, pooled_height, pooled_width, depth)``.
    The reference semantics are those of ``cropcore_numpy``; see docs/semantics.md.
    """


@hookspec
def cropcore_roi_align_grad_image(call: RoiAlignGradImageCall) -> Any:
    """The gradient of roi_align (``mode="avg"``) with respect to the image (torchvision's
    backward).

    ``call.grads``: float16, float32 or float64, the shape of roi_align's result. ``call.boxes``
    and the other fields as for :func:`cropcore_roi_align`; ``call.image_shape``: the image's
    :class:`cropcore.spec.ImageShape`.

    Returns ``grads``' dtype with shape ``call.output_shape`` (the image's shape).
    """


@hookspec
def cropcore_conformance_expected_failures() -> dict[str, str]:
    """Conformance cases this backend is known to fail, each with the reason.

    Optional. Keys are case ids of the conformance suite (``fnmatch`` patterns allowed), values the
    reason shown in the report, e.g.
    ``{"*/grad_image/*-float16*": "accumulates float16 gradients in float32"}``. The suite reports
    such cases as expected failures, and flags a declaration that no longer matches any failure as
    stale. Case ids are ``<category>/<op>/<name>``; ``cropcore conformance --list`` prints them.
    """


@hookspec
def cropcore_conformance_tolerances() -> dict[str, str]:
    """The tolerance class this backend's results are held to, by conformance case id pattern.

    Optional. By default every numeric result must be bit-identical to the expected one (the
    contract of a CPU backend). A backend that cannot be declares a looser, named class for the
    cases concerned, e.g. ``{"*": "fma"}`` for a GPU backend whose compiler contracts
    ``a * b + c`` into fused multiply-adds, or ``{"*/grad_*": "reordered-sums"}`` for gradients
    summed in parallel. The classes (``exact``, ``fma``, ``reordered-sums``) are defined, and
    stated in every report, by ``cropcore_conformance.TOLERANCES``; the first matching pattern wins.
    """
