"""Discovery through entry points: third-party plugins, broken plugins, malformed plugins, listing."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cropcore
from cropcore.registry import registry

GOOD_PLUGIN = '''
"""A third-party backend: crops by delegating to the numpy reference, and counts its calls."""
import numpy as np
from cropcore import BackendInfo, hookimpl

CALLS = []

@hookimpl
def cropcore_backend_info():
    return BackendInfo(name="{name}", aliases=("{name}-alias",), version="1.2.3",
                       description="test plugin")

@hookimpl
def cropcore_crop_and_resize(call):
    CALLS.append(call.op)
    return np.full(call.output_shape, 7.0, np.float32)
'''


def install_plugin(
    root: Path, dist: str, module: str, source: str, entry_name: str | None = None
) -> None:
    """Install ``module`` (with ``source``) as distribution ``dist`` whose entry point names it."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[cropcore.backends]\n{entry_name or module} = {module}\n"
    )


@pytest.fixture
def site(tmp_path):
    """A directory on sys.path acting as site-packages; cropcore rescans before and after."""
    sys.path.insert(0, str(tmp_path))
    before = set(sys.modules)
    importlib.invalidate_caches()
    registry.refresh()
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in set(sys.modules) - before:
        if (
            getattr(sys.modules[name], "__file__", "")
            and str(tmp_path) in sys.modules[name].__file__
        ):
            del sys.modules[name]
    importlib.invalidate_caches()
    registry.refresh()


def test_builtin_numpy_backend_is_discovered_through_its_entry_point():
    numpy_backend = registry.get("numpy")
    assert numpy_backend is not None
    assert numpy_backend.distribution == "cropcore"
    assert numpy_backend.entry_point == "cropcore_numpy"
    assert set(numpy_backend.ops) == {
        "crop_and_resize",
        "crop_and_resize_grad_image",
        "crop_and_resize_grad_boxes",
        "crop2d",
        "roi_align",
        "roi_align_grad_image",
    }


def test_third_party_plugin_is_discovered_listed_and_dispatched_to(site):
    install_plugin(
        site, "thirdparty-backend", "thirdparty_plugin", GOOD_PLUGIN.format(name="thirdparty")
    )
    cropcore.backends(refresh=True)
    listed = {b.name: b for b in cropcore.backends()}
    assert "thirdparty" in listed
    backend = listed["thirdparty"]
    assert backend.aliases == ("thirdparty-alias",)
    assert backend.version == "1.2.3"
    assert backend.distribution == "thirdparty-backend"
    # crop2d is a slice the core runs itself, so every backend offers it.
    assert backend.ops == ("crop_and_resize", "crop2d")

    image = np.zeros((1, 3, 3, 1), np.float32)
    out = cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [0], (2, 2), backend="thirdparty-alias")
    assert (out == 7.0).all()
    assert sys.modules["thirdparty_plugin"].CALLS == ["crop_and_resize"]


def test_plugin_installed_after_import_is_found_on_refresh(site):
    assert registry.get("latecomer") is None
    install_plugin(site, "latecomer", "latecomer_plugin", GOOD_PLUGIN.format(name="latecomer"))
    importlib.invalidate_caches()
    assert "latecomer" not in [b.name for b in cropcore.backends()]
    assert "latecomer" in [b.name for b in cropcore.backends(refresh=True)]


def test_plugin_that_fails_to_import_is_reported_and_others_still_work(site):
    install_plugin(
        site, "broken-backend", "broken_plugin", "raise ImportError('needs libfoo.so.3')"
    )
    install_plugin(site, "fine-backend", "fine_plugin", GOOD_PLUGIN.format(name="fine"))
    listed = {b.name: b for b in cropcore.backends(refresh=True)}
    assert listed["broken_plugin"].status == "broken"
    assert "ImportError: needs libfoo.so.3" in listed["broken_plugin"].reason
    assert listed["fine"].status in ("installed", "available")
    assert listed["numpy"].status in ("installed", "available")
    image = np.zeros((1, 3, 3, 1), np.float32)
    assert cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [0], (2, 2), backend="fine").shape == (
        1,
        2,
        2,
        1,
    )


def test_naming_a_broken_plugin_raises_with_its_error(site):
    install_plugin(site, "broken-backend", "broken_plugin", "raise RuntimeError('boom at import')")
    cropcore.backends(refresh=True)
    with pytest.raises(cropcore.BackendUnavailableError, match=r"broken.*boom at import"):
        cropcore.crop2d(np.zeros((1, 3, 3, 1)), 1, backend="broken_plugin")


def test_plugin_whose_import_exits_does_not_stop_discovery(site):
    install_plugin(site, "exiting-backend", "exiting_plugin", "import sys; sys.exit(3)")
    listed = {b.name: b for b in cropcore.backends(refresh=True)}
    assert listed["exiting_plugin"].status == "broken"
    assert "SystemExit" in listed["exiting_plugin"].reason


def test_plugin_with_wrong_hook_signature_is_broken(site):
    source = """
        from cropcore import BackendInfo, hookimpl
        @hookimpl
        def cropcore_backend_info():
            return BackendInfo(name="badsig")
        @hookimpl
        def cropcore_crop_and_resize(call, extra_argument):
            return None
    """
    install_plugin(site, "badsig", "badsig_plugin", source)
    listed = {b.name: b for b in cropcore.backends(refresh=True)}
    assert listed["badsig_plugin"].status == "broken"
    assert "extra_argument" in listed["badsig_plugin"].reason


def test_plugin_with_misspelt_hook_is_broken(site):
    source = """
        from cropcore import BackendInfo, hookimpl
        @hookimpl
        def cropcore_backend_info():
            return BackendInfo(name="typo")
        @hookimpl
        def cropcore_crop_and_resise(call):
            return None
    """
    install_plugin(site, "typo", "typo_plugin", source)
    listed = {b.name: b for b in cropcore.backends(refresh=True)}
    assert listed["typo_plugin"].status == "broken"
    assert "cropcore_crop_and_resise" in listed["typo_plugin"].reason


def test_plugin_without_info_hook_is_broken(site):
    source = """
        from cropcore import hookimpl
        @hookimpl
        def cropcore_crop2d(call):
            return call.x
    """
    install_plugin(site, "noinfo", "noinfo_plugin", source)
    listed = {b.name: b for b in cropcore.backends(refresh=True)}
    assert listed["noinfo_plugin"].status == "broken"
    assert "cropcore_backend_info" in listed["noinfo_plugin"].reason


def test_plugin_claiming_a_taken_name_is_broken_and_original_kept(site):
    install_plugin(site, "impostor", "impostor_plugin", GOOD_PLUGIN.format(name="numpy"))
    listed = {b.name: b for b in cropcore.backends(refresh=True)}
    assert listed["numpy"].distribution == "cropcore"
    assert listed["impostor_plugin"].status == "broken"
    assert "'numpy'" in listed["impostor_plugin"].reason


def test_directly_registered_backend_survives_refresh(register_backend):
    register_backend("fakedirect")
    assert "fakedirect" in [b.name for b in cropcore.backends(refresh=True)]


def test_register_rejects_malformed_module_with_value_error():
    import types

    with pytest.raises(ValueError, match="could not register backend plugin 'empty'"):
        registry.register(types.ModuleType("empty"), name="empty")
    assert registry.get("empty") is None


def test_backends_probe_turns_installed_into_available():
    numpy_backend = next(b for b in cropcore.backends(probe=True) if b.name == "numpy")
    assert numpy_backend.status == "available"
    assert numpy_backend.reason == ""
    summary = numpy_backend.as_dict()
    assert summary["name"] == "numpy"
    assert summary["devices"] == ["cpu"]
    json.dumps(summary)


def _run(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_importing_cropcore_and_listing_backends_loads_no_framework(tmp_path):
    install_plugin(
        tmp_path, "thirdparty-backend", "thirdparty_plugin", GOOD_PLUGIN.format(name="thirdparty")
    )
    code = (
        "import sys, cropcore\n"
        "names = [b.name for b in cropcore.backends()]\n"
        "assert 'thirdparty' in names and 'numpy' in names, names\n"
        "loaded = sorted(m for m in ('torch', 'numba', 'cupy', 'tensorflow', 'jax') if m in sys.modules)\n"
        "print(loaded)\n"
    )
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_crop_on_the_numpy_backend_loads_no_framework():
    code = (
        "import sys, numpy as np, cropcore\n"
        "cropcore.crop_and_resize(np.ones((1, 4, 4, 1)), [[0, 0, 1, 1]], [0], (2, 2), backend='numpy')\n"
        "print(sorted(m for m in ('torch', 'numba', 'cupy') if m in sys.modules))\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_backend_without_a_stated_version_shows_its_requirement_s():
    import importlib.metadata

    from cropcore.registry import registry

    assert registry.get("numpy").version == importlib.metadata.version("numpy")
