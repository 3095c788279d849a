"""roi_align and its image gradient as torch custom ops, with autograd, on any device.

``torch.ops.cropcore.roi_align`` and ``torch.ops.cropcore.roi_align_grad_image``: torchvision's
arithmetic (docs/semantics.md, "roi_align"), every operation a torch elementwise operation in the
compute dtype ``T`` (float64 for float64, else float32) and in torchvision's order, so that CPU
results are bit-identical to the reference backend and to ONNX Runtime:

- the per-box and per-sample tables (corners, weights, empty samples) are
  :mod:`cropcore.roi_samples`'s, computed on the host from the boxes (a device synchronisation for
  CUDA boxes: this first version reads them);
- forward: for each sample ``(iy, ix)`` in order, ``out = out + (((w1 * v1 + w2 * v2) + w3 * v3) +
  w4 * v4)`` over every bin and channel of a chunk of boxes at once (the corners of every sample
  gathered with one ``index_select``), then ``out / count``; max mode: the ``std::max`` chain;
- image gradient: ``(g * w) / count`` per corner, added with ``index_add_`` in torchvision's order
  (boxes, bins, samples, corners), which torch's CPU ``index_add_`` keeps (it adds the rows one
  after another); on CUDA its atomics add in any order (the ``reordered-sums`` tolerance).

On CPU, when the compiled loops (:mod:`cropcore_torch._native_roi`) are available (not with
``CROPCORE_TORCH_NATIVE=0`` or without a C compiler), both ops run those instead: the same
arithmetic in the same order (cropcore_numba's kernels ported to C, one pass per box, threads over
boxes in the forward and over channels in the gradient), so the same bits, several times faster.

Box values nobody checked (CUDA tensors, where cropcore reads no values; docs/decisions.md,
"Unchecked values") are safe: a non-finite coordinate makes its samples empty, and a box index
outside ``[0, batch)`` gives that box a NaN result and no gradient; no index is ever formed from
it.

Autograd: the image's gradient is ``roi_align_grad_image`` (avg mode; max mode raises, as neither
torchvision nor ONNX defines its gradient); the boxes get none, as in torchvision. That op is linear in ``grads``, so its own gradient is ``roi_align``:
double backward works.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from cropcore.hookspecs import RoiAlignCall, RoiAlignGradImageCall
from cropcore.roi_samples import sample_axes
from cropcore_torch import _native, _native_roi

__all__ = ["RoIAlign", "run_roi_align", "run_roi_align_grad_image"]

_TORCH = {np.float32: torch.float32, np.float64: torch.float64}
#: Entries (samples x 4 corners x channels) added per ``index_add_`` in the gradient.
_CHUNK_ELEMENTS = 1 << 22


def _tables(boxes: Tensor, height: int, width: int, size, scale, ratio, aligned, dtype, device):
    """:func:`cropcore.roi_samples.sample_axes` of the boxes, as tensors on ``device``."""
    host = boxes.detach().to("cpu", torch.float64 if dtype is np.float64 else torch.float32)
    y, x, grid_h, grid_w = sample_axes(
        host.numpy(), (height, width), size, scale, ratio, aligned, dtype
    )

    def moved(axis):
        return tuple(
            torch.from_numpy(np.ascontiguousarray(a)).to(device)
            for a in (axis.inside, axis.low, axis.high, axis.frac, axis.rest)
        )

    return moved(y), moved(x), grid_h, grid_w


def _native_for(x: Tensor) -> bool:
    """Whether the compiled loops run this call: a real CPU tensor, not while torch.compile
    traces, and the library available. (While tracing, the op's fake runs, not this; a compiled
    graph calls the op on real tensors, which takes the loops.)"""
    return (
        x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not is_fake(x)
        and _native.available()
    )


def _std_max(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(a < b, b, a)


def _forward(
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    max_mode: bool,
    channels_first: bool,
) -> Tensor:
    args = (pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned)
    if _native_for(image):
        return _native_roi.roi_align(image, boxes, box_indices, *args, max_mode, channels_first)
    return _forward_ops(image, boxes, box_indices, *args, max_mode, channels_first)


def _forward_ops(
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    max_mode: bool,
    channels_first: bool,
) -> Tensor:
    """The forward pass in torch operations (any device; CPU without the compiled loops)."""
    nhwc = image.permute(0, 2, 3, 1) if channels_first else image
    batch, height, width, depth = nhwc.shape
    dtype = np.float64 if image.dtype == torch.float64 else np.float32
    t = _TORCH[dtype]
    k = boxes.shape[0]
    device = image.device
    out = torch.zeros((k, pooled_height, pooled_width, depth), dtype=t, device=device)
    if k and depth:
        size = (pooled_height, pooled_width)
        y, x, grid_h, grid_w = _tables(
            boxes, height, width, size, spatial_scale, sampling_ratio, aligned, dtype, device
        )
        y_in, y_low, y_high, y_frac, y_rest = y
        x_in, x_low, x_high, x_frac, x_rest = x
        pixels = nhwc.to(t).reshape(batch * height * width, depth)
        indices = box_indices.to(device, torch.int64)
        bad = (indices < 0) | (indices >= batch)  # unchecked (device) indices: a NaN crop
        base = indices.clamp(0, max(batch - 1, 0))[:, None, None] * (height * width)
        gh = torch.from_numpy(grid_h).to(device)
        gw = torch.from_numpy(grid_w).to(device)
        every_sample_real = bool(
            (grid_h == y_low.shape[2]).all() and (grid_w == x_low.shape[2]).all()
        )
        zero = torch.zeros((), dtype=t, device=device)
        started_flat = torch.zeros(
            (k, pooled_height * pooled_width), dtype=torch.bool, device=device
        )
        samples = [(iy, ix) for iy in range(y_low.shape[2]) for ix in range(x_low.shape[2])]
        corners = [
            (ya, wy, xa, wx)
            for ya, wy in ((y_low, y_rest), (y_high, y_frac))
            for xa, wx in ((x_low, x_rest), (x_high, x_frac))
        ]
        bins = pooled_height * pooled_width
        reals, weights, rows = [], [], []  # per sample (and corner), in torchvision's order
        for iy, ix in samples:
            real = (iy < gh)[:, None, None] & (ix < gw)[:, None, None]
            reals.append(real.expand(k, pooled_height, pooled_width).reshape(k, bins))
            inside = y_in[:, :, iy, None] & x_in[:, None, :, ix]
            for ya, wy, xa, wx in corners:
                weights.append(torch.where(inside, wy[:, :, iy, None] * wx[:, None, :, ix], zero))
                row = ya[:, :, iy, None] * width + xa[:, None, :, ix]
                rows.append(base + torch.where(inside, row, 0))
        count_s = len(samples)
        if samples:
            weight = torch.stack(weights).reshape(count_s, 4, k, bins, 1)
            row = torch.stack(rows).reshape(count_s * 4, k, bins)
        flat = out.view(k, bins, depth)
        # Every sample and corner in one gather, one multiplication and three additions per
        # chunk of boxes (each operation starts and joins a thread team, which costs milliseconds
        # on a loaded machine, so that few large ones beat many that fit in the cache): chunks
        # of about 64 MB of terms.
        step = max(1, 4 * _CHUNK_ELEMENTS // max(1, count_s * 4 * bins * depth))
        for first in range(0, k if samples else 0, step):
            n = slice(first, min(first + step, k))
            m = n.stop - n.start
            terms = pixels.index_select(0, row[:, n].reshape(-1))
            terms = terms.view(count_s, 4, m, bins, depth).mul_(weight[:, :, n])
            chunk = flat[n]
            if max_mode:
                for s_, real in enumerate(reals):
                    t0, t1, t2, t3 = terms[s_]
                    val = _std_max(_std_max(_std_max(t0, t1), t2), t3)
                    r = real[n]
                    first_sample = (r & ~started_flat[n])[..., None]
                    later = torch.where(r[..., None], _std_max(chunk, val), chunk)
                    chunk.copy_(torch.where(first_sample, val, later))
                    started_flat[n] |= r
            else:
                # ((w1 v1 + w2 v2) + w3 v3) + w4 v4 for every sample at once, then in turn
                term = terms[:, 0].add_(terms[:, 1]).add_(terms[:, 2]).add_(terms[:, 3])
                for s_, real in enumerate(reals):
                    if every_sample_real:
                        chunk.add_(term[s_])
                    else:
                        chunk.copy_(torch.where(real[n][..., None], chunk + term[s_], chunk))
        if not max_mode:
            count = np.maximum(grid_h * grid_w, 1).astype(dtype)
            out.div_(torch.from_numpy(count).to(device)[:, None, None, None])
        out = torch.where(bad[:, None, None, None], torch.nan, out)
    out = out.to(image.dtype)
    return out.permute(0, 3, 1, 2).contiguous() if channels_first else out


def _grad(
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    batch: int,
    height: int,
    width: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    channels_first: bool,
) -> Tensor:
    args = (batch, height, width, spatial_scale, sampling_ratio, aligned, channels_first)
    if _native_for(grads):
        return _native_roi.roi_align_grad_image(grads, boxes, box_indices, *args)
    return _grad_ops(grads, boxes, box_indices, *args)


def _grad_ops(
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    batch: int,
    height: int,
    width: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    channels_first: bool,
) -> Tensor:
    """The image gradient in torch operations (any device; CPU without the compiled loops)."""
    g_nhwc = grads.permute(0, 2, 3, 1) if channels_first else grads
    k, pooled_h, pooled_w, depth = g_nhwc.shape
    dtype = np.float64 if grads.dtype == torch.float64 else np.float32
    t = _TORCH[dtype]
    device = grads.device
    pixels = batch * height * width
    # one row more than the image: empty samples and bad unchecked indices add there, unread
    acc = torch.zeros((pixels + 1, depth), dtype=t, device=device)
    if k and depth:
        y, x, grid_h, grid_w = _tables(
            boxes, height, width, (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned,
            dtype, device,
        )  # fmt: skip
        y_in, y_low, y_high, y_frac, y_rest = y
        x_in, x_low, x_high, x_frac, x_rest = x
        count = torch.from_numpy((grid_h * grid_w).astype(dtype)).to(device)
        g = g_nhwc.to(t)
        indices = box_indices.to(device, torch.int64)
        good = (indices >= 0) & (indices < batch)  # a bad unchecked index adds nothing
        gy, gx = y_low.shape[2], x_low.shape[2]
        per_box = pooled_h * pooled_w * max(gy * gx, 1) * 4 * depth
        step = max(1, _CHUNK_ELEMENTS // 4 // max(per_box, 1))
        for first in range(0, k, step):
            n = slice(first, min(first + step, k))
            # (box, ph, pw, iy, ix): torchvision's order of samples, then the four corners
            inside = y_in[n][:, :, None, :, None] & x_in[n][:, None, :, None, :]
            inside = inside & good[n][:, None, None, None, None]
            base = indices[n].clamp(0, max(batch - 1, 0))[:, None, None, None, None]
            base = base * (height * width)
            rows, weights = [], []
            for ya, wy in ((y_low, y_rest), (y_high, y_frac)):
                for xa, wx in ((x_low, x_rest), (x_high, x_frac)):
                    weights.append(wy[n][:, :, None, :, None] * wx[n][:, None, :, None, :])
                    row = base + ya[n][:, :, None, :, None] * width + xa[n][:, None, :, None, :]
                    rows.append(torch.where(inside, row, pixels))
            row = torch.stack(rows, dim=-1)
            w = torch.stack(weights, dim=-1)
            value = g[n][:, :, :, None, None, None, :] * w[..., None]
            value.div_(count[n][:, None, None, None, None, None, None])
            acc.index_add_(0, row.reshape(-1), value.reshape(-1, depth))
    out = acc[:pixels].reshape(batch, height, width, depth).to(grads.dtype)
    return out.permute(0, 3, 1, 2).contiguous() if channels_first else out


_roi_align = torch.library.custom_op("cropcore::roi_align", mutates_args=())(_forward)
_roi_align_grad = torch.library.custom_op("cropcore::roi_align_grad_image", mutates_args=())(_grad)


@_roi_align.register_fake
def _roi_align_fake(
    image, boxes, box_indices, pooled_height, pooled_width, scale, ratio, aligned, max_mode, first
):
    depth = image.shape[1] if first else image.shape[3]
    k = boxes.shape[0]
    shape = (
        (k, depth, pooled_height, pooled_width)
        if first
        else (k, pooled_height, pooled_width, depth)
    )
    return image.new_empty(shape)


@_roi_align_grad.register_fake
def _roi_align_grad_fake(
    grads, boxes, box_indices, batch, height, width, scale, ratio, aligned, first
):
    depth = grads.shape[1] if first else grads.shape[3]
    shape = (batch, depth, height, width) if first else (batch, height, width, depth)
    return grads.new_empty(shape)


def _setup(ctx, inputs, output) -> None:
    image, boxes, box_indices, _, _, scale, ratio, aligned, max_mode, first = inputs
    dims = image.shape
    batch, height, width = (dims[0], dims[2], dims[3]) if first else (dims[0], dims[1], dims[2])
    ctx.save_for_backward(boxes, box_indices)
    ctx.args = (batch, height, width, scale, ratio, aligned, first)
    ctx.max_mode = max_mode


def _backward(ctx, grad: Tensor):
    if ctx.max_mode:
        raise RuntimeError(
            "roi_align with mode='max' has no gradient (neither torchvision nor ONNX defines one)"
        )
    boxes, box_indices = ctx.saved_tensors
    # no gradient for the boxes, as torchvision's roi_align has none
    grad_image = torch.ops.cropcore.roi_align_grad_image(grad, boxes, box_indices, *ctx.args)
    return (grad_image, *([None] * 9))


def _grad_setup(ctx, inputs, output) -> None:
    grads, boxes, box_indices, _, _, _, scale, ratio, aligned, first = inputs
    dims = grads.shape
    ph, pw = (dims[2], dims[3]) if first else (dims[1], dims[2])
    ctx.save_for_backward(boxes, box_indices)
    ctx.args = (ph, pw, scale, ratio, aligned, False, first)


def _grad_backward(ctx, grad: Tensor):
    boxes, box_indices = ctx.saved_tensors
    # linear in grads: the gradient of <grad, roi_align_grad_image(grads)> is roi_align(grad)
    grads_grad = torch.ops.cropcore.roi_align(grad, boxes, box_indices, *ctx.args)
    return (grads_grad, *([None] * 9))


_roi_align.register_autograd(_backward, setup_context=_setup)
_roi_align_grad.register_autograd(_grad_backward, setup_context=_grad_setup)


def _boxes_on(call: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    boxes = torch.as_tensor(call.boxes)
    indices = torch.as_tensor(call.box_indices)
    return boxes.to(device), indices.to(device)


def run_roi_align(call: RoiAlignCall) -> Tensor:
    """``cropcore::roi_align`` on a canonical call."""
    image = call.image
    boxes, indices = _boxes_on(call, image.device)
    return torch.ops.cropcore.roi_align(
        image,
        boxes,
        indices,
        *call.output_size,
        call.spatial_scale,
        call.sampling_ratio,
        call.aligned,
        call.mode == "max",
        call.channels_first,
    )


def run_roi_align_grad_image(call: RoiAlignGradImageCall) -> Tensor:
    """``cropcore::roi_align_grad_image`` on a canonical call."""
    grads = call.grads
    boxes, indices = _boxes_on(call, grads.device)
    dims = call.image_shape
    return torch.ops.cropcore.roi_align_grad_image(
        grads,
        boxes,
        indices,
        dims.batch,
        dims.height,
        dims.width,
        call.spatial_scale,
        call.sampling_ratio,
        call.aligned,
        call.channels_first,
    )


class RoIAlign(torch.nn.Module):
    """torchvision's ``RoIAlign`` module on cropcore: ``forward(input, rois)`` with NCHW ``input``
    and ``rois`` as ``(K, 5)`` ``[index, x1, y1, x2, y2]`` or a list of per-image ``(L, 4)``.

    Args:
        output_size: ``(pooled_height, pooled_width)`` or one int.
        spatial_scale: multiplies the box coordinates.
        sampling_ratio: samples per bin along each axis; ``<= 0`` adaptive.
        aligned: the half-pixel shift (torchvision's ``aligned=True``).
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        import cropcore

        return cropcore.roi_align(
            input,
            rois,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
