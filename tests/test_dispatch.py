"""Every dispatch rule: named backends, aliases, overrides, priority, devices, declining, conversion."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

import cropcore
from cropcore.errors import (
    BackendDeclinedError,
    BackendError,
    BackendUnavailableError,
    UnknownBackendError,
)

BOXES = [[0.0, 0.0, 1.0, 1.0]]


def crop(image, **kwargs):
    return cropcore.crop_and_resize(image, BOXES, [0], (2, 3), **kwargs)


def test_explicit_backend_runs_there(register_backend, image):
    fake = register_backend("fake")
    out = crop(image, backend="fake")
    assert len(fake.calls) == 1
    assert out.shape == (1, 2, 3, 3)


def test_alias_names_the_backend(register_backend, image):
    fake = register_backend("fakecupy", aliases=("fakecuda",))
    crop(image, backend="fakecuda")
    assert len(fake.calls) == 1


def test_backend_names_are_case_insensitive(register_backend, image):
    fake = register_backend("fake")
    crop(image, backend="FAKE")
    assert len(fake.calls) == 1


def test_unknown_backend_lists_installed_and_install_hint(image, monkeypatch):
    from cropcore import dispatch

    # A known backend name that is not installed gets its install hint in the message.
    monkeypatch.setitem(dispatch.INSTALL_HINTS, "notinstalled", 'pip install "cropcore[extra]"')
    with pytest.raises(UnknownBackendError) as info:
        crop(image, backend="notinstalled")
    message = str(info.value)
    assert "backend='notinstalled'" in message
    assert 'pip install "cropcore[extra]"' in message
    assert "Installed: " in message
    assert "numpy" in message


def test_unknown_backend_is_a_value_error(image):
    with pytest.raises(ValueError, match="nosuchbackend"):
        crop(image, backend="nosuchbackend")


def test_backend_must_be_a_string(image):
    with pytest.raises(TypeError, match="backend must be"):
        crop(image, backend=3)


def test_unavailable_backend_raises_with_reason_not_fallback(register_backend, image):
    fake = register_backend("fakegpu", check=lambda: "no CUDA device: cudaErrorNoDevice")
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        crop(image, backend="fakegpu")
    assert fake.calls == []


def test_check_that_raises_makes_backend_unavailable(register_backend, image):
    def check():
        raise OSError("libcuda.so not found")

    register_backend("fakebroken", check=check)
    with pytest.raises(BackendUnavailableError, match=r"OSError: libcuda.so not found"):
        crop(image, backend="fakebroken")


def test_backend_missing_requirement_is_unavailable_with_install_hint(register_backend, image):
    register_backend(
        "fakeneeds", requires=("no_such_module_xyz",), install_hint="pip install fakeneeds[all]"
    )
    with pytest.raises(
        BackendUnavailableError, match=r"requires no_such_module_xyz.*pip install fakeneeds\[all\]"
    ):
        crop(image, backend="fakeneeds")


def test_use_backend_context_overrides_automatic(register_backend, image):
    fake = register_backend("fake")
    with cropcore.use_backend("fake"):
        crop(image)
    crop(image)
    assert len(fake.calls) == 1


def test_explicit_backend_beats_context(register_backend, image):
    a = register_backend("fakea")
    b = register_backend("fakeb")
    with cropcore.use_backend("fakea"):
        crop(image, backend="fakeb")
    assert (len(a.calls), len(b.calls)) == (0, 1)


def test_nested_contexts_restore_outer(register_backend, image):
    a = register_backend("fakea")
    b = register_backend("fakeb")
    with cropcore.use_backend("fakea"):
        with cropcore.use_backend("fakeb"):
            crop(image)
        crop(image)
    assert (len(a.calls), len(b.calls)) == (1, 1)


def test_use_backend_none_lifts_outer_override(register_backend, image):
    a = register_backend("fakea")
    with cropcore.use_backend("fakea"), cropcore.use_backend(None):
        crop(image)
    assert a.calls == []


def test_context_is_per_thread(register_backend, image):
    fake = register_backend("fake")
    cropcore.set_priority(["numpy"])
    seen = []

    def other_thread():
        seen.append(cropcore.explain("crop_and_resize", image, BOXES, [0], (2, 3)).backend)

    with cropcore.use_backend("fake"):
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        crop(image)
    assert seen == ["numpy"]
    assert len(fake.calls) == 1


def test_context_naming_unknown_backend_raises(image):
    with cropcore.use_backend("nosuch"), pytest.raises(UnknownBackendError, match="use_backend"):
        crop(image)


def test_environment_variable_overrides_automatic(register_backend, image, cropcore_env):
    fake = register_backend("fake")
    cropcore_env.set("CROPCORE_BACKEND", "fake")
    crop(image)
    assert len(fake.calls) == 1


def test_context_beats_environment_variable(register_backend, image, cropcore_env):
    a = register_backend("fakea")
    b = register_backend("fakeb")
    cropcore_env.set("CROPCORE_BACKEND", "fakea")
    with cropcore.use_backend("fakeb"):
        crop(image)
    assert (len(a.calls), len(b.calls)) == (0, 1)


def test_environment_variable_naming_unknown_backend_raises(image, cropcore_env):
    cropcore_env.set("CROPCORE_BACKEND", "nosuch")
    with pytest.raises(UnknownBackendError, match="CROPCORE_BACKEND"):
        crop(image)


def test_numpy_image_goes_to_the_first_cpu_backend_in_the_priority_list(image):
    available = {b.name for b in cropcore.backends(probe=True) if b.status == "available"}
    expected = next(name for name in ("numba", "numpy") if name in available)
    assert cropcore.explain("crop_and_resize", image, BOXES, [0], (2, 3)).backend == expected
    cropcore.set_priority(["numpy"])
    assert cropcore.explain("crop_and_resize", image, BOXES, [0], (2, 3)).backend == "numpy"


def test_third_party_backend_is_not_chosen_automatically(register_backend, image):
    fake = register_backend("fake")
    crop(image)
    assert fake.calls == []


def test_priority_list_decides(register_backend, image):
    fake = register_backend("fake")
    cropcore.set_priority(["fake", "numpy"])
    crop(image)
    assert len(fake.calls) == 1


def test_priority_from_environment(register_backend, image, cropcore_env):
    fake = register_backend("fake")
    cropcore_env.set("CROPCORE_PRIORITY", "fake, numpy")
    crop(image)
    assert len(fake.calls) == 1


def test_set_priority_beats_environment(register_backend, image, cropcore_env):
    fake = register_backend("fake")
    cropcore_env.set("CROPCORE_PRIORITY", "fake,numpy")
    cropcore.set_priority(["numpy"])
    crop(image)
    assert fake.calls == []


def test_set_priority_rejects_a_bare_string():
    with pytest.raises(TypeError, match="sequence"):
        cropcore.set_priority("numpy")


def test_priority_skips_backend_on_other_device(register_backend, image):
    gpu = register_backend("fakegpu", devices=("cuda",))
    cropcore.set_priority(["fakegpu", "numpy"])
    decision = cropcore.explain("crop_and_resize", image, BOXES, [0], (2, 3))
    assert decision.backend == "numpy"
    assert any("fakegpu" in r and "cuda" in r for r in decision.reasons)
    crop(image)
    assert gpu.calls == []


def test_priority_skips_unavailable_backend(register_backend, image):
    register_backend("fakegpu", check=lambda: "no GPU")
    cropcore.set_priority(["fakegpu", "numpy"])
    decision = cropcore.explain("crop_and_resize", image, BOXES, [0], (2, 3))
    assert decision.backend == "numpy"
    assert any("no GPU" in r for r in decision.reasons)


def test_priority_skips_backend_without_the_dtype(register_backend, image):
    register_backend("fakefloat", dtypes=("float64",))
    cropcore.set_priority(["fakefloat", "numpy"])
    decision = cropcore.explain("crop_and_resize", image, BOXES, [0], (2, 3))
    assert decision.backend == "numpy"
    assert any("float32" in r for r in decision.reasons)


def test_priority_skips_backend_without_the_op(register_backend, image):
    register_backend("fakecroponly", ops=("crop2d",))
    cropcore.set_priority(["fakecroponly", "numpy"])
    decision = cropcore.explain("crop_and_resize", image, BOXES, [0], (2, 3))
    assert decision.backend == "numpy"
    assert any("does not implement crop_and_resize" in r for r in decision.reasons)


def test_declining_backend_is_skipped_automatically(register_backend, image):
    fake = register_backend("fake", declines=lambda call: "too many boxes for me")
    cropcore.set_priority(["fake", "numpy"])
    decision = cropcore.explain("crop_and_resize", image, BOXES, [0], (2, 3))
    assert decision.backend == "numpy"
    assert any("too many boxes for me" in r for r in decision.reasons)
    crop(image)
    assert fake.calls == []


def test_declining_named_backend_raises_with_its_reason(register_backend, image):
    register_backend("fake", declines=lambda call: "too many boxes for me")
    with pytest.raises(BackendDeclinedError, match="too many boxes for me"):
        crop(image, backend="fake")


def test_named_backend_without_the_op_raises(register_backend, image):
    register_backend("fakecroponly", ops=("crop2d",))
    with pytest.raises(BackendDeclinedError, match="does not implement crop_and_resize"):
        crop(image, backend="fakecroponly")


def test_no_backend_can_run_raises_with_each_reason(register_backend, image):
    register_backend("fakegpu", devices=("cuda",))
    cropcore.set_priority(["fakegpu"])
    with pytest.raises(
        BackendError, match=r"no backend can run crop_and_resize.*fakegpu: computes on cuda"
    ):
        crop(image)


def test_explain_does_not_run_the_backend(register_backend, image):
    fake = register_backend("fake")
    decision = cropcore.explain("crop_and_resize", image, BOXES, [0], (2, 3), backend="fake")
    assert decision.backend == "fake"
    assert decision.rule == "the backend= argument"
    assert fake.calls == []
    assert "runs on backend 'fake'" in str(decision)


def test_explain_validates_arguments(image):
    with pytest.raises(ValueError, match="crop_size must be positive"):
        cropcore.explain("crop_and_resize", image, BOXES, [0], (0, 3))


def test_explain_rejects_unknown_op(image):
    with pytest.raises(ValueError, match="op must be one of"):
        cropcore.explain("resize", image)


def test_every_decision_is_logged_at_debug(register_backend, image, caplog):
    register_backend("fake")
    cropcore.set_priority(["numpy"])
    with caplog.at_level(logging.DEBUG, logger="cropcore.dispatch"):
        crop(image, backend="fake")
        crop(image)
    messages = [r.getMessage() for r in caplog.records if r.name == "cropcore.dispatch"]
    assert any("runs on backend 'fake', chosen by the backend= argument" in m for m in messages)
    assert any("runs on backend 'numpy', chosen by the priority list" in m for m in messages)


def test_backend_returning_wrong_shape_is_caught(register_backend, image):
    fake = register_backend("fake")

    def wrong(call):
        return np.zeros((1, 1, 1, 1), np.float32)

    from cropcore.registry import registry

    registry.get("fake")._hooks["cropcore_crop_and_resize"] = wrong
    with pytest.raises(
        BackendError, match=r"returned float32 \(1, 1, 1, 1\).*requires float32 \(1, 2, 3, 3\)"
    ):
        crop(image, backend="fake")
    assert fake.calls == []


# -- arrays of other libraries ---------------------------------------------------------------------


def test_torch_tensor_comes_back_as_torch_tensor_with_automatic_selection(image):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(image)
    out = crop(t)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), crop(image))


def test_torch_tensor_comes_back_as_torch_tensor_with_numpy_backend(image):
    torch = pytest.importorskip("torch")
    out = crop(torch.from_numpy(image), backend="numpy")
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), crop(image))


def test_torch_boxes_and_indices_are_accepted(image):
    torch = pytest.importorskip("torch")
    out = cropcore.crop_and_resize(
        image, torch.tensor(BOXES, dtype=torch.float64), torch.tensor([0]), (2, 3)
    )
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, crop(image))


def test_torch_tensor_converted_without_copy(image):
    torch = pytest.importorskip("torch")
    from cropcore.arrays import library_for

    t = torch.from_numpy(image)
    view = library_for("numpy").convert(t)
    assert np.shares_memory(view, image)


def test_explain_names_the_conversions(image):
    torch = pytest.importorskip("torch")
    decision = cropcore.explain(
        "crop_and_resize", torch.from_numpy(image), BOXES, [0], (2, 3), backend="numpy"
    )
    assert "image: torch (cpu) -> numpy" in decision.conversions
    assert "result: numpy -> torch" in decision.conversions


def test_requires_grad_with_non_autograd_backend_warns(image):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(image).requires_grad_()
    with pytest.warns(RuntimeWarning, match="detached"):
        out = crop(t, backend="numpy")
    assert not out.requires_grad


def test_the_detached_warning_says_how_to_get_autograd(register_backend, image, monkeypatch):
    """The hint after "detached" names the fix: the torch backend where it has the op (it is
    only left out of the priority list here), else that no autograd backend has it; without the
    torch backend, the extra that installs it."""
    torch = pytest.importorskip("torch")
    from cropcore.registry import registry

    torch_backend = registry.get("torch")
    if torch_backend is None or torch_backend.status in ("broken", "unavailable"):
        pytest.skip("the torch backend is not installed here")
    register_backend("fakeplain")
    cropcore.set_priority(["fakeplain", "numpy"])
    t = torch.from_numpy(image).requires_grad_()
    with pytest.warns(
        RuntimeWarning,
        match=r"detached from the graph \(backend 'torch' gives autograd but was not chosen",
    ):
        crop(t)
    # a torch backend (say an older one) without this op: no autograd backend implements it
    monkeypatch.setattr(
        torch_backend, "ops", tuple(o for o in torch_backend.ops if o != "crop_and_resize")
    )
    with pytest.warns(
        RuntimeWarning,
        match=r"detached from the graph \(no autograd backend implements crop_and_resize yet\)",
    ):
        out = crop(t)
    assert not out.requires_grad
    # without a usable torch backend: the extra that installs it
    monkeypatch.setattr(torch_backend, "status", "unavailable")
    with pytest.warns(
        RuntimeWarning, match=r"detached from the graph \(pip install .cropcore\[torch\]"
    ):
        crop(t)


def test_requires_grad_prefers_autograd_backend(register_backend, image):
    torch = pytest.importorskip("torch")
    plain = register_backend("fakeplain")
    grad = register_backend("fakegrad", autograd=True)
    cropcore.set_priority(["fakeplain", "fakegrad", "numpy"])
    crop(torch.from_numpy(image).requires_grad_())
    assert (len(plain.calls), len(grad.calls)) == (0, 1)


def test_torch_boxes_requiring_grad_with_a_numpy_image_warn_and_stay_numpy(register_backend, image):
    """The result follows the image (NumPy): no graph can reach it, so the call says so and runs
    where NumPy arrays run, instead of on an autograd backend whose graph would be dropped."""
    torch = pytest.importorskip("torch")
    plain = register_backend("fakeplain")
    grad = register_backend("fakegrad", autograd=True)
    cropcore.set_priority(["fakeplain", "fakegrad", "numpy"])  # autograd would pick fakegrad
    boxes = torch.tensor(BOXES, requires_grad=True)
    with pytest.warns(RuntimeWarning, match=r"boxes of crop_and_resize require\(s\) grad.*image"):
        out = cropcore.crop_and_resize(image, boxes, [0], (2, 3))
    assert isinstance(out, np.ndarray)
    assert (len(plain.calls), len(grad.calls)) == (1, 0)
    with pytest.warns(RuntimeWarning, match="detached"):
        decision = cropcore.explain("crop_and_resize", image, boxes, [0], (2, 3))
    assert decision.backend == "fakeplain"


def test_requires_grad_under_no_grad_needs_no_autograd(register_backend, image):
    torch = pytest.importorskip("torch")
    plain = register_backend("fakeplain")
    register_backend("fakegrad", autograd=True)
    cropcore.set_priority(["fakeplain", "fakegrad", "numpy"])
    with torch.no_grad():
        crop(torch.from_numpy(image).requires_grad_())
    assert len(plain.calls) == 1


def test_backend_receives_its_own_array_library(register_backend, image):
    torch = pytest.importorskip("torch")
    fake = register_backend("faketorch", array_library="torch")

    def torch_zeros(call):
        fake.calls.append(call)
        return torch.zeros(call.output_shape, dtype=torch.float32)

    from cropcore.registry import registry

    registry.get("faketorch")._hooks["cropcore_crop_and_resize"] = torch_zeros
    out = crop(image, backend="faketorch")
    call = fake.calls[0]
    assert isinstance(call.image, torch.Tensor)
    assert isinstance(call.boxes, torch.Tensor)
    assert call.boxes.dtype == torch.float32
    assert isinstance(call.box_indices, torch.Tensor)
    assert call.box_indices.dtype == torch.int32
    assert isinstance(out, np.ndarray)


class _CudaArrayInterfaceOnly:
    """Stands for a numba.cuda device array: ``__cuda_array_interface__`` and no ``__dlpack__``."""

    shape = (1, 2, 2, 1)
    dtype = np.dtype("float32")

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": "<f4", "data": (0, False), "version": 3}


def test_cuda_array_interface_objects_are_recognised():
    from cropcore.arrays import library_name

    assert library_name(_CudaArrayInterfaceOnly()) == "cuda_array_interface"


def test_cuda_array_interface_object_without_cupy_is_refused_with_install_hint(monkeypatch):
    import importlib

    real_import = importlib.import_module

    def no_cupy(name, *args):
        if name == "cupy":
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_cupy)
    with pytest.raises(TypeError, match=r"needs CuPy: pip install \"cropcore\[cupy\]\""):
        cropcore.crop_and_resize(_CudaArrayInterfaceOnly(), BOXES, [0], (2, 2))


def test_crop2d_is_sliced_by_the_core_for_a_backend_without_the_hook(register_backend):
    fake = register_backend("nocrop2d", ops=("crop_and_resize",))
    x = np.arange(2 * 5 * 6 * 3, dtype=np.float32).reshape(2, 5, 6, 3)
    out = cropcore.crop2d(x, ((1, 2), (0, 3)), backend="nocrop2d")
    assert fake.calls == []
    assert np.shares_memory(out, x)
    np.testing.assert_array_equal(out, x[:, 1:3, 0:3, :])


def _run_in_fresh_interpreter(code: str) -> str:
    import os
    import subprocess
    import sys
    import textwrap

    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=120,
        check=True,
    )
    return done.stdout


def test_a_numpy_call_imports_no_framework_its_arrays_do_not_belong_to():
    # Issue 18: automatic selection probed every backend of the priority list, and the torch
    # backend's check imported torch (3 s) for a call that numba or numpy runs.
    out = _run_in_fresh_interpreter(
        """
        import sys
        import numpy as np
        import cropcore
        image = np.zeros((1, 8, 8, 3), np.float32)
        boxes = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
        cropcore.crop_and_resize(image, boxes, [0], (4, 4))
        cropcore.explain("crop_and_resize", image, boxes, [0], (4, 4))
        print(sorted(m for m in ("torch", "cupy", "jax") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_a_backend_that_converts_is_not_probed_when_a_native_one_takes_the_call(
    register_backend, image
):
    probed = []
    register_backend("converter", array_library="torch", check=lambda: probed.append(1))
    register_backend("native", check=lambda: None)
    cropcore.set_priority(["converter", "native"])
    assert cropcore.explain("crop_and_resize", image, BOXES, [0], (2, 3)).backend == "native"
    crop(image)
    assert probed == []


def test_a_backend_that_converts_is_probed_when_no_native_one_takes_the_call(
    register_backend, image
):
    # The lazy probing keeps the fallback: when every NumPy backend of the priority list is
    # turned down, the next one (which converts) is probed and chosen.
    probed = []
    register_backend("converter", array_library="torch", check=lambda: probed.append(1))
    register_backend("native", declines=lambda call: "planted refusal")
    cropcore.set_priority(["converter", "native"])
    decision = cropcore.explain("crop_and_resize", image, BOXES, [0], (2, 3))
    assert decision.backend == "converter"
    assert decision.reasons == ["skipped native: planted refusal"]
    assert probed == [1]


def test_the_debug_log_in_docs_dispatch_md_is_what_a_numpy_call_logs():
    # Issue 18: the page's example showed what a call logs, but every backend of the priority
    # list was probed (and logged) before the choice.
    import importlib.util
    import pathlib
    import re

    if any(importlib.util.find_spec(name) is None for name in ("numba", "torch", "jax")):
        pytest.skip("the example is written for the numba, torch and jax extras")
    page = (pathlib.Path(__file__).parents[1] / "docs" / "dispatch.md").read_text()
    section = page[page.index("## Logging") :]
    documented = re.search(r"```text\n(.*?)```", section, re.S).group(1).splitlines()
    logged = _run_in_fresh_interpreter(
        """
        import logging, sys
        import numpy as np
        import cropcore
        logging.basicConfig(
            level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s", stream=sys.stdout
        )
        cropcore.crop_and_resize(np.zeros((1, 5, 5, 3), np.float32), [[0, 0, 1, 1]], [0], (3, 3))
        """
    )
    ours = [line.rstrip() for line in logged.splitlines() if line.startswith("cropcore.")]
    assert ours == documented
