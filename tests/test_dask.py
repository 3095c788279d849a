"""cropcore.dask: crop_and_resize and crop2d on dask arrays, and the crop_files pipeline.

Graph-level tests run on dask's synchronous scheduler; the cluster tests start a real
``distributed.LocalCluster`` (two worker processes on loopback), and one of them kills a worker
in the middle of a crop_files job.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

dask = pytest.importorskip("dask")
pytest.importorskip("dask.core")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
Image = pytest.importorskip("PIL.Image")

import cropcore  # noqa: E402
import cropcore.dask as cdask  # noqa: E402
from cropcore.cli.files import to_uint8  # noqa: E402
from cropcore.dask import pipeline  # noqa: E402

CLIENT_TIMEOUT = 60  # seconds: no client call in this file may wait longer


def bits(a: np.ndarray) -> np.ndarray:
    """float32 values as their bit patterns, so that NaNs and signed zeros compare exactly."""
    return np.ascontiguousarray(a).view(np.uint32)


def make_inputs(seed: int = 0, batch: int = 7, num_boxes: int = 40, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(batch, 19, 23, 3)).astype(dtype)
    boxes = rng.uniform(-0.3, 1.3, size=(num_boxes, 4)).astype(np.float32)
    box_indices = rng.integers(0, batch, size=num_boxes).astype(np.int32)
    return image, boxes, box_indices


# --------------------------------------------------------------------------------------------------
# crop_and_resize on dask arrays


@pytest.mark.parametrize("backend", ["numpy", None])
@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_crops_are_bit_identical_to_the_whole_array_result(backend, method, data_format):
    image, boxes, box_indices = make_inputs()
    if data_format == "channels_first":
        image = np.ascontiguousarray(image.transpose(0, 3, 1, 2))
    expected = cropcore.crop_and_resize(
        image, boxes, box_indices, (5, 6), method, -1.5, data_format=data_format, backend=backend
    )
    lazy = cdask.crop_and_resize(
        da.from_array(image, chunks=(3, -1, -1, -1)),
        boxes,
        box_indices,
        (5, 6),
        method,
        -1.5,
        data_format=data_format,
        backend=backend,
    )
    got = lazy.compute(scheduler="synchronous")
    assert isinstance(lazy, da.Array)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_array_equal(bits(got), bits(expected))


def test_boxes_come_back_in_their_own_order_when_not_grouped_by_image():
    image, boxes, box_indices = make_inputs(seed=1)
    assert np.any(np.diff(box_indices) < 0)
    got = cdask.crop_and_resize(
        da.from_array(image, chunks=(2, -1, -1, -1)), boxes, box_indices, (4, 4), backend="numpy"
    ).compute(scheduler="synchronous")
    expected = cropcore.crop_and_resize(image, boxes, box_indices, (4, 4), backend="numpy")
    np.testing.assert_array_equal(bits(got), bits(expected))


def test_result_has_one_chunk_per_image_chunk_with_boxes_of_known_size():
    image, boxes, box_indices = make_inputs(seed=2)
    order = np.argsort(box_indices, kind="stable")  # grouped by image: no reordering needed
    boxes, box_indices = boxes[order], box_indices[order]
    box_indices[box_indices >= 3] = np.clip(box_indices[box_indices >= 3], 5, 6)  # chunk 1 empty
    result = cdask.crop_and_resize(
        da.from_array(image, chunks=(3, -1, -1, -1)), boxes, box_indices, (4, 4)
    )
    in_chunk = np.bincount(box_indices // 3, minlength=3)
    assert result.chunks[0] == tuple(int(n) for n in in_chunk if n)
    assert result.chunks[1:] == ((4,), (4,), (3,))


def test_chunks_no_box_points_into_are_never_computed():
    image, boxes, box_indices = make_inputs(seed=3, batch=6)
    box_indices[:] = np.where(box_indices < 3, 0, 5)  # images 0 and 5: chunks 0 and 2 of 3

    def load(block, block_info=None):
        if block_info[None]["chunk-location"][0] == 1:
            raise AssertionError("chunk 1 has no boxes and must not be computed")
        return block

    lazy_image = da.from_array(image, chunks=(2, -1, -1, -1)).map_blocks(load, dtype=image.dtype)
    got = cdask.crop_and_resize(lazy_image, boxes, box_indices, (3, 3), backend="numpy")
    expected = cropcore.crop_and_resize(image, boxes, box_indices, (3, 3), backend="numpy")
    np.testing.assert_array_equal(bits(got.compute(scheduler="synchronous")), bits(expected))


def test_no_boxes_give_an_empty_float32_array():
    image, _, _ = make_inputs()
    result = cdask.crop_and_resize(
        da.from_array(image, chunks=(3, -1, -1, -1)), np.zeros((0, 4)), np.zeros(0, int), (5, 6)
    )
    got = result.compute(scheduler="synchronous")
    assert result.shape == got.shape == (0, 5, 6, 3)
    assert got.dtype == np.float32


def test_dask_boxes_with_unknown_chunk_sizes_are_computed_and_routed():
    image, boxes, box_indices = make_inputs(seed=4)
    keep = box_indices != 2
    lazy_boxes = da.from_array(boxes, chunks=7)
    lazy_indices = da.from_array(box_indices, chunks=7)
    lazy_boxes, lazy_indices = lazy_boxes[lazy_indices != 2], lazy_indices[lazy_indices != 2]
    assert np.isnan(lazy_indices.shape[0])
    result = cdask.crop_and_resize(
        da.from_array(image, chunks=(2, -1, -1, -1)), lazy_boxes, lazy_indices, (4, 5)
    )
    assert not any(np.isnan(size) for sizes in result.chunks for size in sizes)
    expected = cropcore.crop_and_resize(image, boxes[keep], box_indices[keep], (4, 5))
    np.testing.assert_array_equal(bits(result.compute(scheduler="synchronous")), bits(expected))


def test_image_chunked_along_height_and_width_is_rechunked_to_whole_images():
    image, boxes, box_indices = make_inputs(seed=5)
    split = da.from_array(image, chunks=(2, 7, 9, 2))
    result = cdask.crop_and_resize(split, boxes, box_indices, (6, 6), backend="numpy")
    expected = cropcore.crop_and_resize(image, boxes, box_indices, (6, 6), backend="numpy")
    np.testing.assert_array_equal(bits(result.compute(scheduler="synchronous")), bits(expected))


def test_image_chunked_along_height_is_refused_with_rechunk_false():
    image, boxes, box_indices = make_inputs()
    with pytest.raises(ValueError, match=r"chunked along height and width .* rechunk=True"):
        cdask.crop_and_resize(
            da.from_array(image, chunks=(2, 7, 9, 3)), boxes, box_indices, (6, 6), rechunk=False
        )


def test_image_with_unknown_chunk_sizes_is_refused():
    image, boxes, box_indices = make_inputs()
    lazy = da.from_array(image, chunks=(3, -1, -1, -1))
    lazy = lazy[da.from_array(np.arange(7), chunks=3) >= 0]
    with pytest.raises(ValueError, match=r"unknown chunk sizes .*compute_chunk_sizes\(\)"):
        cdask.crop_and_resize(lazy, boxes, box_indices, (6, 6))


def refusal(call):
    with pytest.raises((ValueError, TypeError, IndexError)) as info:
        call()
    return type(info.value), str(info.value)


@pytest.mark.parametrize(
    ("boxes", "box_indices", "crop_size"),
    [
        pytest.param([[0, 0, 1, 1]], [7], (3, 3), id="index-past-batch"),
        pytest.param([[0, 0, 1, 1]], [-1], (3, 3), id="negative-index"),
        pytest.param([[0, 0, np.inf, 1]], [0], (3, 3), id="infinite-box"),
        pytest.param([[0, 0, 1]], [0], (3, 3), id="box-shape"),
        pytest.param([[0, 0, 1, 1]], [0, 1], (3, 3), id="count-mismatch"),
        pytest.param([[0, 0, 1, 1]], [0.5], (3, 3), id="float-index"),
        pytest.param([[0, 0, 1, 1]], [0], (0, 3), id="crop-size"),
    ],
)
@pytest.mark.parametrize("lazy_boxes", [False, True])
def test_bad_arguments_are_refused_up_front_as_cropcore_refuses_them(
    boxes, box_indices, crop_size, lazy_boxes
):
    image = make_inputs()[0]
    expected = refusal(lambda: cropcore.crop_and_resize(image, boxes, box_indices, crop_size))
    if lazy_boxes:
        boxes, box_indices = (
            da.from_array(np.asarray(boxes)),
            da.from_array(np.asarray(box_indices)),
        )
    got = refusal(
        lambda: cdask.crop_and_resize(
            da.from_array(image, chunks=(3, -1, -1, -1)), boxes, box_indices, crop_size
        )
    )
    assert got == expected


def test_a_use_backend_block_around_the_call_applies_to_its_chunks(register_backend):
    fake = register_backend("fakechunks")
    image, boxes, box_indices = make_inputs()
    with cropcore.use_backend("fakechunks"):
        lazy = cdask.crop_and_resize(
            da.from_array(image, chunks=(3, -1, -1, -1)), boxes, box_indices, (2, 2)
        )
    lazy.compute(scheduler="synchronous")  # outside the block: the graph remembers
    assert len(fake.calls) == 3  # one call per image chunk: images 0-2, 3-5 and 6


@pytest.mark.parametrize("op", ["crop_and_resize", "crop2d"])
def test_cropcore_itself_points_a_dask_array_to_cropcore_dask(op):
    image = da.zeros((2, 8, 8, 3), chunks=1)
    args = (image, [[0, 0, 1, 1]], [0], (2, 2)) if op == "crop_and_resize" else (image, 1)
    with pytest.raises(TypeError, match=r"is a dask array; .* in cropcore\.dask .*\.compute\(\)"):
        getattr(cropcore, op)(*args)


def test_a_numpy_image_is_accepted_and_wrapped():
    image, boxes, box_indices = make_inputs()
    got = cdask.crop_and_resize(image, boxes, box_indices, (3, 4))
    assert isinstance(got, da.Array)
    expected = cropcore.crop_and_resize(image, boxes, box_indices, (3, 4))
    np.testing.assert_array_equal(bits(got.compute(scheduler="synchronous")), bits(expected))


# --------------------------------------------------------------------------------------------------
# crop2d on dask arrays


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_crop2d_equals_cropcore_crop2d_and_keeps_the_chunks(data_format):
    x = np.arange(4 * 20 * 30 * 2, dtype=np.int16).reshape(4, 20, 30, 2)
    if data_format == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    chunks = (2, 7, 10, 2) if data_format == "channels_last" else (2, 2, 7, 10)
    lazy = cdask.crop2d(da.from_array(x, chunks=chunks), ((8, 3), (1, 10)), data_format)
    expected = cropcore.crop2d(x, ((8, 3), (1, 10)), data_format)
    got = lazy.compute(scheduler="synchronous")
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, expected)
    height_chunks, width_chunks = (
        (6, 3),
        (9, 10),
    )  # rows 8:17 of (7,7,6), columns 1:20 of (10,10,10)
    expected_chunks = (
        ((2, 2), height_chunks, width_chunks, (2,))
        if data_format == "channels_last"
        else ((2, 2), (2,), height_chunks, width_chunks)
    )
    assert lazy.chunks == expected_chunks


def test_crop2d_reads_only_the_source_chunks_it_keeps():
    source = da.from_array(np.ones((2, 12, 12, 1)), chunks=(1, 4, 4, 1))
    cropped = cdask.crop2d(source, 4)
    assert cropped.chunks == ((1, 1), (4,), (4,), (1,))
    needed = cropped.__dask_graph__().cull(set(dask.core.flatten(cropped.__dask_keys__())))
    read = {key for key in needed if isinstance(key, tuple) and key[0] == source.name}
    assert read == {(source.name, image, 1, 1, 0) for image in (0, 1)}  # the middle chunks only


def test_crop2d_accepts_an_unknown_batch_size():
    x = da.from_array(np.ones((4, 6, 6, 1), np.uint8), chunks=(2, 6, 6, 1))
    x = x[da.from_array(np.arange(4), chunks=2) > 0]
    assert np.isnan(x.shape[0])
    assert cdask.crop2d(x, 1).compute(scheduler="synchronous").shape == (3, 4, 4, 1)


@pytest.mark.parametrize("cropping", [((3, 3), (0, 0)), -1, ((1, 2),), "1", ((1.5, 1), (0, 0))])
def test_crop2d_refuses_what_cropcore_crop2d_refuses_with_its_message(cropping):
    x = np.ones((2, 6, 5, 1), np.float32)
    expected = refusal(lambda: cropcore.crop2d(x, cropping))
    assert refusal(lambda: cdask.crop2d(da.from_array(x), cropping)) == expected


# --------------------------------------------------------------------------------------------------
# crop_files, on dask's local scheduler


def write_collection(folder: Path, images: int, boxes_per_image: int, size=(40, 52), seed=0):
    """``images`` PNGs (RGB, plus one grey and one RGBA) and boxes.csv listing their boxes."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(images):
        height, width = size[0] + i % 3, size[1]
        yy, xx = np.mgrid[:height, :width]
        rgb = np.stack([(xx * 5 + i) % 256, (yy * 7) % 256, (xx + yy) * 3 % 256], axis=-1)
        rgb = (rgb + rng.integers(0, 20, rgb.shape)).clip(0, 255).astype(np.uint8)
        mode = "L" if i == 1 else "RGBA" if i == 2 else "RGB"
        picture = Image.fromarray(rgb).convert(mode)
        name = f"images/img{i:03d}.png"
        picture.save(folder / name)
        for _ in range(boxes_per_image):
            y1, x1 = rng.uniform(-0.1, 0.6, 2)
            y2, x2 = rng.uniform(0.4, 1.1, 2)
            rows.append(
                [
                    name,
                    f"{y1:.6f}",
                    f"{x1:.6f}",
                    f"{y2:.6f}",
                    f"{x2:.6f}",
                    rng.choice(["cat", "dog", ""]),
                ]
            )
    with open(folder / "boxes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "y1", "x1", "y2", "x2", "label"])
        writer.writerows(rows)
    return folder / "boxes.csv", rows


def single_machine(
    folder,
    rows,
    crop_size,
    *,
    dtype="uint8",
    channels=3,
    coords="normalized",
    method="bilinear",
    backend="numpy",
):
    """The crops computed one by one in this process, without dask (what crop_files must equal)."""
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    crops = []
    for name, *box, _ in rows:
        pixels = np.asarray(Image.open(folder / name).convert(mode))
        pixels = pixels.reshape(*pixels.shape[:2], channels)
        box = [float(v) for v in box]
        if coords == "pixels":
            height, width = pixels.shape[:2]
            box = [
                box[0] / (height - 1),
                box[1] / (width - 1),
                box[2] / (height - 1),
                box[3] / (width - 1),
            ]
        crop = cropcore.crop_and_resize(
            pixels[None], [box], [0], crop_size, method, backend=backend
        )
        crops.append(to_uint8(crop)[0] if dtype == "uint8" else crop[0])
    return np.stack(crops)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collection")
    table, rows = write_collection(folder, images=8, boxes_per_image=5)
    return folder, table, rows


def read_crops(out):
    return zarr.open_group(str(out), mode="r")["crops"][:]


def test_crop_files_writes_the_single_machine_result_to_zarr(collection, tmp_path):
    folder, table, rows = collection
    out = tmp_path / "crops.zarr"
    report = cdask.crop_files(
        table, out, (12, 10), partition_size=6, backend="numpy", progress=False
    )
    assert (report.rows, report.partitions, report.written, report.skipped) == (40, 7, 7, 0)
    assert report.crop_bytes == 40 * 12 * 10 * 3
    np.testing.assert_array_equal(read_crops(out), single_machine(folder, rows, (12, 10)))
    group = zarr.open_group(str(out), mode="r")
    classes = list(group.attrs["labels"])
    assert classes == ["cat", "dog"]
    codes = group["labels"][:]
    assert [classes[c] if c >= 0 else "" for c in codes] == [row[5] for row in rows]
    assert group["done"][:].tolist() == [1] * 7
    assert group["crops"].chunks[0] in (1, 2, 3, 6)  # a divisor of the partition size


def test_crop_files_float32_pixels_and_grey(collection, tmp_path):
    folder, _, rows = collection
    height_width = [Image.open(folder / r[0]).size[::-1] for r in rows]
    pixel_rows = [
        [
            r[0],
            float(r[1]) * (h - 1),
            float(r[2]) * (w - 1),
            float(r[3]) * (h - 1),
            float(r[4]) * (w - 1),
            r[5],
        ]
        for r, (h, w) in zip(rows, height_width, strict=True)
    ]
    table = [
        dict(zip(["image", "y1", "x1", "y2", "x2", "label"], r, strict=True)) for r in pixel_rows
    ]
    out = tmp_path / "grey.zarr"
    cdask.crop_files(
        table,
        out,
        (7, 9),
        "nearest",
        coords="pixels",
        dtype="float32",
        channels=1,
        partition_size=16,
        root=folder,
        backend="numpy",
        progress=False,
    )
    expected = single_machine(
        folder, pixel_rows, (7, 9), dtype="float32", channels=1, coords="pixels", method="nearest"
    )
    got = read_crops(out)
    assert got.dtype == np.float32
    assert got.shape == (40, 7, 9, 1)
    np.testing.assert_array_equal(bits(got), bits(expected))


def test_a_rerun_skips_finished_partitions_and_redoes_only_unfinished_ones(collection, tmp_path):
    _, table, _ = collection
    out = tmp_path / "crops.zarr"
    first = cdask.crop_files(table, out, (8, 8), partition_size=10, progress=False)
    expected = read_crops(out)
    again = cdask.crop_files(table, out, (8, 8), partition_size=10, progress=False)
    assert (again.written, again.skipped, again.rows_written) == (0, 4, 0)
    # A partition cut short: its marker never written, its rows half garbage.
    group = zarr.open_group(str(out), mode="r+")
    group["done"][2] = 0
    group["crops"][20:25] = 255
    repaired = cdask.crop_files(table, out, (8, 8), partition_size=10, progress=False)
    assert (repaired.written, repaired.skipped, repaired.rows_written) == (1, 3, 10)
    np.testing.assert_array_equal(read_crops(out), expected)
    assert first.written == 4


def test_another_job_is_not_written_over_an_existing_output(collection, tmp_path):
    _, table, _ = collection
    out = tmp_path / "crops.zarr"
    cdask.crop_files(table, out, (8, 8), partition_size=10, progress=False)
    with pytest.raises(FileExistsError, match=r"different crop_files job.*overwrite=True"):
        cdask.crop_files(table, out, (8, 9), partition_size=10, progress=False)
    report = cdask.crop_files(table, out, (8, 9), partition_size=10, progress=False, overwrite=True)
    assert report.written == 4
    assert read_crops(out).shape == (40, 8, 9, 3)
    (tmp_path / "other").mkdir()
    with pytest.raises(FileExistsError, match="not a crop_files output"):
        cdask.crop_files(table, tmp_path / "other", (8, 9), progress=False)


def test_a_bad_image_fails_its_partition_only_and_a_rerun_after_the_fix_finishes(
    collection, tmp_path
):
    folder, _, rows = collection
    broken = [list(r) for r in rows]
    broken[12][0] = "images/missing.png"
    table = [dict(zip(["image", "y1", "x1", "y2", "x2", "label"], r, strict=True)) for r in broken]
    out = tmp_path / "crops.zarr"
    with pytest.raises(
        cdask.CropFilesError, match=r"1 of 4 partitions failed: partition 1: .*missing\.png.*row 12"
    ) as info:
        cdask.crop_files(table, out, (8, 8), partition_size=10, root=folder, progress=False)
    assert info.value.report.written == 3
    assert set(info.value.failures) == {1}
    assert cdask.finished_partitions(out) == {0, 2, 3}
    (folder / "images" / "missing.png").write_bytes((folder / rows[12][0]).read_bytes())
    try:
        report = cdask.crop_files(
            table, out, (8, 8), partition_size=10, root=folder, progress=False
        )
    finally:
        (folder / "images" / "missing.png").unlink()
    assert (report.written, report.skipped) == (1, 3)
    np.testing.assert_array_equal(
        read_crops(out), single_machine(folder, rows, (8, 8), backend=None)
    )


def test_table_errors_name_the_file_and_line(tmp_path):
    table = tmp_path / "boxes.csv"
    table.write_text("image,y1,x1,y2,x2\na.png,0,0,1,1\nb.png,0,zero,1,1\n")
    with pytest.raises(ValueError, match=r"boxes\.csv: line 3: x1 must be a number"):
        cdask.crop_files(table, tmp_path / "out.zarr", progress=False)
    table.write_text("image,y1,x1,y2,x2\na.png,0,0,1e39,1\n")
    with pytest.raises(ValueError, match=r"line 2: y2 overflows float32"):
        cdask.crop_files(table, tmp_path / "out.zarr", progress=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) x2"):
        cdask.crop_files([{"image": "a.png", "y1": 0, "x1": 0, "y2": 1}], tmp_path / "o.zarr")
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize(
    ("module", "package", "format"),
    [("PIL", "Pillow", "zarr"), ("PIL", "Pillow", "png"), ("zarr", "zarr", "zarr")],
)
def test_a_missing_package_is_named_with_the_dask_extra_before_anything_is_submitted(
    collection, tmp_path, monkeypatch, module, package, format
):
    _, table, _ = collection
    for name in [m for m in sys.modules if m == module or m.startswith(f"{module}.")]:
        monkeypatch.setitem(sys.modules, name, None)  # makes importing it fail
    monkeypatch.setitem(sys.modules, module, None)
    submitted = []
    client = types.SimpleNamespace(
        submit=lambda *args, **kwargs: submitted.append(args),
        nthreads=lambda: {"worker": 1},
    )
    monkeypatch.setattr(pipeline, "run_local", lambda *args: submitted.append(args))
    out = tmp_path / "out"
    with pytest.raises(ImportError) as info:
        cdask.crop_files(table, out, (8, 8), format=format, client=client, progress=False)
    message = str(info.value)
    assert f"needs {package}, which is not installed" in message
    assert message.endswith('install it with: pip install "cropcore[dask]"')
    assert "cropcore[cli]" not in message
    assert submitted == []
    assert not out.exists()


def test_image_file_output_equals_what_cropcore_crop_writes(collection, tmp_path, monkeypatch):
    pytest.importorskip("rich")  # cropcore crop's progress bar
    folder, table, rows = collection
    report = cdask.crop_files(
        table,
        tmp_path / "files",
        (9, 11),
        format="png",
        channels=None,
        partition_size=7,
        progress=False,
    )
    assert report.written == 6
    monkeypatch.chdir(folder)
    images = sorted({r[0] for r in rows})
    status = cropcore.cli.main(
        [
            "crop",
            *images,
            "--boxes",
            str(table),
            "--size",
            "9",
            "11",
            "--out",
            str(tmp_path / "cli"),
            "-q",
        ]
    )
    assert status == 0
    cli_files = sorted(os.listdir(tmp_path / "cli"))
    assert sorted(n for n in os.listdir(tmp_path / "files") if not n.startswith(".")) == cli_files
    for name in cli_files:
        ours = np.asarray(Image.open(tmp_path / "files" / name))
        theirs = np.asarray(Image.open(tmp_path / "cli" / name))
        np.testing.assert_array_equal(ours, theirs)
    assert cdask.finished_partitions(tmp_path / "files") == set(range(6))


def test_progress_callback_counts_partitions(collection, tmp_path):
    _, table, _ = collection
    seen = []
    cdask.crop_files(
        table,
        tmp_path / "p.zarr",
        (4, 4),
        partition_size=8,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(i, 5) for i in range(1, 6)]


# --------------------------------------------------------------------------------------------------
# Importing


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_cropcore_imports_no_dask():
    result = run_python(
        "import sys, numpy as np, cropcore\n"
        "cropcore.backends()\n"
        "cropcore.crop_and_resize(np.ones((1, 4, 4, 1)), [[0, 0, 1, 1]], [0], (2, 2))\n"
        "print(sorted(m for m in ('dask', 'distributed', 'zarr', 'cropcore.dask') if m in sys.modules))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_dask_the_import_error_says_how_to_install_it():
    result = run_python(
        "import sys\nsys.modules['dask'] = None\n"
        "try:\n    import cropcore.dask\nexcept ImportError as exc:\n    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "cropcore[dask]"' in result.stdout


# --------------------------------------------------------------------------------------------------
# A real cluster: two worker processes on loopback


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        # Without a dashboard the scheduler still serves /health on 8787 unless told otherwise.
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
        timeout=CLIENT_TIMEOUT,
    )
    try:
        with distributed.Client(cluster, timeout=CLIENT_TIMEOUT) as connected:
            connected.wait_for_workers(2, timeout=CLIENT_TIMEOUT)
            yield connected
    finally:
        cluster.close(timeout=CLIENT_TIMEOUT)


def test_crop_and_resize_on_the_cluster_is_bit_identical(client):
    image, boxes, box_indices = make_inputs(seed=6, batch=9, num_boxes=60, dtype=np.float32)
    lazy = cdask.crop_and_resize(
        da.from_array(image, chunks=(2, -1, -1, -1)), boxes, box_indices, (7, 5), backend="numpy"
    )
    got = client.compute(lazy).result(timeout=CLIENT_TIMEOUT)
    expected = cropcore.crop_and_resize(image, boxes, box_indices, (7, 5), backend="numpy")
    np.testing.assert_array_equal(bits(got), bits(expected))


def test_crop_files_on_the_cluster_writes_the_single_machine_result(client, collection, tmp_path):
    folder, table, rows = collection
    out = tmp_path / "crops.zarr"
    report = cdask.crop_files(
        table,
        out,
        (12, 10),
        partition_size=5,
        backend="numpy",
        client=client,
        progress=False,
        timeout=CLIENT_TIMEOUT,
    )
    assert (report.written, report.workers) == (8, 2)
    np.testing.assert_array_equal(read_crops(out), single_machine(folder, rows, (12, 10)))


def test_a_worker_killed_mid_job_loses_no_crop_and_writes_none_twice(client, tmp_path):
    # One image per partition, big enough that the job lasts a few seconds on two workers.
    folder = tmp_path / "collection"
    table, rows = write_collection(folder, images=36, boxes_per_image=6, size=(256, 256), seed=7)
    out = tmp_path / "crops.zarr"
    partitions = 36
    pids = client.run(os.getpid)
    outcome = {}

    def job():
        try:
            outcome["report"] = cdask.crop_files(
                table,
                out,
                (160, 160),
                partition_size=6,
                backend="numpy",
                client=client,
                progress=False,
                timeout=3 * CLIENT_TIMEOUT,
            )
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc

    runner = threading.Thread(target=job, daemon=True)
    runner.start()

    def unfinished_in_flight():
        """A worker running a partition not marked done, once a few partitions are done."""
        done = cdask.finished_partitions(out) if (out / "done").exists() else set()
        if len(done) < 3:
            return None, done
        for worker, keys in client.processing().items():
            if {int(str(key).rsplit("-", 1)[1]) for key in keys} - done:
                return worker, done
        return None, done

    deadline = time.monotonic() + CLIENT_TIMEOUT
    victim, done_at_kill = unfinished_in_flight()
    while victim is None:
        assert runner.is_alive(), outcome
        assert time.monotonic() < deadline, "no worker was found in the middle of a partition"
        time.sleep(0.005)
        victim, done_at_kill = unfinished_in_flight()
    os.kill(pids[victim], signal.SIGKILL)
    runner.join(timeout=3 * CLIENT_TIMEOUT)
    assert not runner.is_alive(), "crop_files did not finish after a worker was killed"
    assert "error" not in outcome, outcome.get("error")
    assert len(done_at_kill) < partitions  # the kill landed in the middle of the job
    report = outcome["report"]
    assert (report.written, report.skipped, report.partitions) == (partitions, 0, partitions)
    # Every partition marked done exactly once, and every row holds its own crop: none lost,
    # none misplaced or written over by another partition.
    assert zarr.open_group(str(out), mode="r")["done"][:].tolist() == [1] * partitions
    np.testing.assert_array_equal(read_crops(out), single_machine(folder, rows, (160, 160)))
    # A rerun finds nothing to do and changes nothing.
    again = cdask.crop_files(
        table,
        out,
        (160, 160),
        partition_size=6,
        backend="numpy",
        client=client,
        progress=False,
        timeout=CLIENT_TIMEOUT,
    )
    assert (again.written, again.skipped) == (0, partitions)
    client.wait_for_workers(2, timeout=CLIENT_TIMEOUT)  # the nanny restarts the killed worker
