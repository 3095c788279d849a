"""Concurrent calls from several Python threads give the same answers as serial calls."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import cropcore
from cropcore import registry as registry_module


def make_job(seed: int):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(3, 17, 23, 4)).astype(np.float32)
    boxes = rng.uniform(-0.3, 1.3, size=(40, 4)).astype(np.float32)
    box_indices = rng.integers(0, 3, size=40)
    method = ("bilinear", "nearest")[seed % 2]
    data_format = ("channels_last", "channels_first")[(seed // 2) % 2]
    if data_format == "channels_first":
        image = np.ascontiguousarray(image.transpose(0, 3, 1, 2))
    return image, boxes, box_indices, method, data_format


def run_job(seed: int):
    image, boxes, box_indices, method, data_format = make_job(seed)
    crops = cropcore.crop_and_resize(
        image, boxes, box_indices, (9, 7), method, -1.0, data_format=data_format
    )
    grads = np.ones_like(crops)
    grad_image = cropcore.crop_and_resize_grad_image(
        grads, boxes, box_indices, image.shape, method, data_format=data_format
    )
    grad_boxes = cropcore.crop_and_resize_grad_boxes(
        grads, image, boxes, box_indices, data_format=data_format
    )
    return crops, grad_image, grad_boxes


def test_threads_agree_with_serial_calls():
    seeds = list(range(16)) * 3
    serial = {seed: run_job(seed) for seed in set(seeds)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(run_job, seeds))
    for seed, results in zip(seeds, concurrent, strict=True):
        for got, expected in zip(results, serial[seed], strict=True):
            np.testing.assert_array_equal(got, expected)


def test_threads_with_different_overrides_do_not_interfere():
    image = np.arange(48, dtype=np.float32).reshape(1, 4, 4, 3)

    def in_context(name):
        with cropcore.use_backend(name):
            return cropcore.explain("crop_and_resize", image, [[0, 0, 1, 1]], [0], (2, 2)).rule

    with ThreadPoolExecutor(max_workers=4) as pool:
        rules = list(pool.map(in_context, ["numpy", None] * 8))
    assert rules[0::2] == ["a use_backend() context"] * 8
    assert all(rule.startswith("the priority list") for rule in rules[1::2])


def test_threads_that_arrive_during_discovery_wait_for_it(monkeypatch):
    # The first calls of a process often come from several threads at once (a dask worker's
    # thread pool): none may see the backend list half-filled ("numpy: not installed").
    slow_scan = registry_module._entry_points

    def entry_points(group):
        time.sleep(0.2)  # discovery is under way for the other threads' whole arrival
        return slow_scan(group)

    monkeypatch.setattr(registry_module, "_entry_points", entry_points)
    registry_module.registry.refresh()
    start = threading.Barrier(4)

    def first_lookup(_):
        start.wait()
        return registry_module.registry.get("numpy")

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            found = list(pool.map(first_lookup, range(4)))
    finally:
        registry_module.registry.refresh()
    assert all(backend is not None and backend.name == "numpy" for backend in found)
