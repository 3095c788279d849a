"""Every built-in backend that can run here passes the conformance suite (so CI certifies them all).

The reference (numpy) is certified by test_conformance.py; this file takes the others, and each
device of theirs that is present here (``--device cuda`` where a GPU is). A backend that cannot
run here (its framework is missing, no GPU) is skipped with the reason.
"""

from __future__ import annotations

import importlib.util

import pytest

import cropcore_conformance
from cropcore.registry import registry


def _targets() -> list[tuple[str, str | None]]:
    targets = []
    for backend in registry.all():
        if backend.distribution != "cropcore" or backend.name == "numpy" or backend.info is None:
            continue
        targets.append((backend.name, None))
        if "cuda" in backend.info.devices and backend.info.array_library != "cupy":
            targets.append((backend.name, "cuda"))
    return targets


def _cuda_here(library: str) -> bool:
    if library == "torch" and importlib.util.find_spec("torch") is not None:
        import torch

        return bool(torch.cuda.is_available())
    if library == "jax" and importlib.util.find_spec("jax") is not None:
        import jax

        try:
            return bool(jax.devices("gpu"))
        except RuntimeError:  # no GPU platform in this jaxlib
            return False
    return False


@pytest.mark.slow
@pytest.mark.parametrize(("name", "device"), _targets(), ids=lambda v: str(v))
def test_backend_passes_the_conformance_suite(name, device):
    backend = registry.get(name)
    backend.probe()
    if backend.status != "available":
        pytest.skip(f"backend {name!r} is {backend.status}: {backend.reason}")
    if device is not None and not _cuda_here(backend.info.array_library):
        pytest.skip(f"no CUDA device for {backend.info.array_library} here")
    report = cropcore_conformance.run(name, device=device)
    failures = "\n".join(f"  {r.id}: {r.message[:300]}" for r in report.failures[:20])
    assert report.exit_code == 0, (
        f"backend {name!r} fails {len(report.failures)} conformance cases "
        f"(`cropcore conformance {name}` for the report):\n{failures}"
    )
