"""Throughput of ``cropcore.dask.crop_files``: in one process, and on a local Dask cluster of 1 and 2 workers.

Run it from the repository root (needs ``pip install -e ".[dask]"``)::

    python benchmarks/bench_dask_pipeline.py                        # 200 PNGs 512x512, 20 boxes each
    python benchmarks/bench_dask_pipeline.py --images 50 --workers 1 2 4 --json dask-bench.json

It writes a collection of RGB PNGs (smooth gradients plus noise, so that PNG compresses them
about as much as photos) and a box table, then crops every box to ``--crop`` x ``--crop`` uint8
RGB into a fresh Zarr array once per configuration, and prints crops per second and MB per second
(of crops written, uncompressed, and of image pixels decoded). The first configuration is dask's
synchronous scheduler in this process (the baseline: no parallelism, no cluster); then a
``distributed.LocalCluster`` of N worker processes (one thread each) on loopback. Each cluster's
workers are warmed up (imports, and JIT compilation for the numba backend) before the timed run.
Every run's Zarr array is compared with the first one's, bit for bit.

The machine's load average (``os.getloadavg``) is printed before and after each run: on a shared
machine, compare runs only under similar load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def write_collection(folder: Path, images: int, size: int, boxes: int, seed: int = 0) -> Path:
    """``images`` RGB PNGs of ``size`` x ``size`` and boxes.csv with ``boxes`` boxes per image."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    lines = ["image,y1,x1,y2,x2,label"]
    for i in range(images):
        phase = rng.uniform(0, 6.28, 3)
        channels = [
            np.sin(6 * xx + phase[c]) + np.cos(4 * yy * (c + 1) + phase[c]) for c in range(3)
        ]
        pixels = np.stack(channels, axis=-1) * 60 + 128 + rng.normal(0, 6, (size, size, 3))
        name = f"images/{i:05d}.png"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / name)
        y1, x1 = rng.uniform(0, 0.7, (2, boxes))
        height, width = rng.uniform(0.1, 0.3, (2, boxes))
        for b in range(boxes):
            box = (y1[b], x1[b], y1[b] + height[b], x1[b] + width[b])
            lines.append(f"{name},{box[0]:.6f},{box[1]:.6f},{box[2]:.6f},{box[3]:.6f},c{b % 5}")
    table = folder / "boxes.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def _warm(crop: int, backend: str | None) -> str:
    """Run one small crop on this worker (imports, JIT); return the backend that ran."""
    import PIL.Image  # noqa: F401  (what the tasks import, so that no import is timed)
    import zarr  # noqa: F401

    import cropcore
    import cropcore.cli.files
    import cropcore.dask

    image = np.zeros((1, 8, 8, 3), np.uint8)
    cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [0], (crop, crop), backend=backend)
    return cropcore.explain(
        "crop_and_resize", image, [[0, 0, 1, 1]], [0], (crop, crop), backend=backend
    ).backend


def run_once(table: Path, out: Path, args: argparse.Namespace, client) -> dict:
    import dask

    import cropcore.dask

    if out.exists():
        shutil.rmtree(out)
    before = os.getloadavg()[0]
    with dask.config.set(scheduler="synchronous") if client is None else _nothing():
        report = cropcore.dask.crop_files(
            table,
            out,
            (args.crop, args.crop),
            partition_size=args.partition_size,
            backend=args.backend,
            client=client,
            progress=False,
        )
    after = os.getloadavg()[0]
    decoded = args.images * args.size * args.size * 3
    return {
        "crops": report.rows_written,
        "partitions": report.partitions,
        "seconds": round(report.seconds, 3),
        "crops_per_s": round(report.crops_per_second, 1),
        "crop_MB_per_s": round(report.megabytes_per_second, 1),
        "image_MB_per_s": round(decoded / 1e6 / report.seconds, 1),
        "load_before": round(before, 2),
        "load_after": round(after, 2),
    }


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="image height and width")
    parser.add_argument("--boxes", type=int, default=20, help="boxes per image")
    parser.add_argument("--crop", type=int, default=224, help="crop height and width")
    parser.add_argument("--partition-size", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backend", default=None, help="backend name (default: automatic)")
    parser.add_argument(
        "--no-malloc-trim",
        action="store_true",
        help="start the workers without MALLOC_TRIM_THRESHOLD_ (which Dask's nanny sets by "
        "default, and which makes allocating large arrays slower)",
    )
    parser.add_argument("--dir", help="working directory (default: a temporary one, removed)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import dask
    import zarr
    from distributed import Client, LocalCluster

    import cropcore

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cropcore-dask-bench-"))
    started = time.perf_counter()
    table = write_collection(work / "collection", args.images, args.size, args.boxes)
    print(
        f"collection: {args.images} PNGs {args.size}x{args.size} RGB, {args.boxes} boxes each "
        f"({args.images * args.boxes} crops of {args.crop}x{args.crop} uint8), written in "
        f"{time.perf_counter() - started:.1f} s to {work}"
    )
    machine = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cropcore": cropcore.__version__,
        "backend": args.backend or _warm(args.crop, None),
        "worker_malloc_trim_threshold": "unset" if args.no_malloc_trim else "Dask's default",
    }
    print(f"machine: {machine}")
    results = []
    reference = None
    configurations = [
        ("in-process (synchronous)", 0),
        *((f"LocalCluster {n} worker(s)", n) for n in args.workers),
    ]
    try:
        for name, workers in configurations:
            out = work / f"crops-{workers}.zarr"
            if workers == 0:
                result = run_once(table, out, args, None)
            else:
                environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
                if args.no_malloc_trim:
                    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
                with (
                    dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
                    LocalCluster(
                        n_workers=workers,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                        silence_logs=logging.ERROR,
                    ) as cluster,
                    Client(cluster) as client,
                ):
                    client.wait_for_workers(workers, timeout=120)
                    client.run(_warm, args.crop, args.backend)
                    result = run_once(table, out, args, client)
            crops = zarr.open_group(str(out), mode="r")["crops"][:]
            if reference is None:
                reference = crops
            result["identical"] = bool(np.array_equal(crops, reference))
            shutil.rmtree(out)
            result = {"configuration": name, "workers": workers, **result}
            results.append(result)
            print(
                f"{name:28s} {result['seconds']:7.2f} s  {result['crops_per_s']:7.1f} crops/s  "
                f"{result['crop_MB_per_s']:6.1f} MB/s crops  {result['image_MB_per_s']:6.1f} MB/s "
                f"images  load {result['load_before']:.2f} -> {result['load_after']:.2f}  "
                f"{'identical' if result['identical'] else 'DIFFERENT'}"
            )
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
