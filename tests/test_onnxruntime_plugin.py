"""ONNX Runtime's RoiAlign, wrapped as a plugin (tests/onnxruntime_plugin), passes the conformance
suite's roi-align category: every forward case it can run (float32 and float64, both layouts),
bit for bit. It declines float16 (it has no such kernel) and has no gradient, so those cases are
skipped. Runs where onnxruntime is installed (the test extra installs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

import cropcore_conformance
from cropcore.registry import registry

pytestmark = pytest.mark.onnxruntime
PLUGIN_DIR = Path(__file__).resolve().parent / "onnxruntime_plugin"


@pytest.fixture
def plugin(monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    import cropcore_onnxruntime

    registry.register(cropcore_onnxruntime, name="onnxruntime")
    yield "onnxruntime"
    registry.unregister("onnxruntime")


def test_onnxruntime_passes_the_roi_align_category(plugin):
    report = cropcore_conformance.run(plugin, categories=["roi-align"])
    failures = [f"{r.id}: {r.message[:200]}" for r in report.failures]
    assert not failures, "\n".join(failures[:10])
    assert report.exit_code == 0
    ran = [r for r in report.results if r.status == "passed"]
    skipped = [r for r in report.results if r.status == "skipped"]
    assert len(ran) >= 300  # the recorded cases in NCHW and NHWC
    assert all("/roi_align_grad/" in r.id or r.id.endswith("-float16") for r in skipped)
