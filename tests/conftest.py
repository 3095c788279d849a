"""Shared fixtures: fake backends registered straight into the registry, and clean global state."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import cropcore
from cropcore import BackendInfo, config, hookimpl
from cropcore.registry import registry


def make_backend_module(
    name: str,
    *,
    array_library: str = "numpy",
    aliases: tuple[str, ...] = (),
    devices: tuple[str, ...] = ("cpu",),
    dtypes: tuple[str, ...] | None = None,
    check: Callable[[], str | None] | None = None,
    declines: Callable[[object], str | None] | None = None,
    autograd: bool = False,
    requires: tuple[str, ...] = (),
    install_hint: str = "",
    ops: tuple[str, ...] = ("crop_and_resize", "crop2d"),
    unchecked_values: bool = False,
) -> types.ModuleType:
    """A plugin module whose ops record the calls they get and return zeros of the right shape."""
    module = types.ModuleType(f"fake_backend_{name}")
    module.calls = []
    info = BackendInfo(
        name=name,
        array_library=array_library,
        aliases=aliases,
        devices=devices,
        autograd=autograd,
        requires=requires,
        install_hint=install_hint,
        version="9.9",
        unchecked_values=unchecked_values,
        **({"dtypes": dtypes} if dtypes is not None else {}),
    )

    @hookimpl
    def cropcore_backend_info():
        return info

    module.cropcore_backend_info = cropcore_backend_info
    if check is not None:
        module.cropcore_backend_check = hookimpl(lambda: check())
        module.cropcore_backend_check.__name__ = "cropcore_backend_check"
    if declines is not None:

        @hookimpl
        def cropcore_backend_declines(call):
            return declines(call)

        module.cropcore_backend_declines = cropcore_backend_declines

    def make_op(op: str):
        def impl(call):
            module.calls.append(call)
            return np.zeros(call.output_shape, call.output_dtype)

        impl.__name__ = f"cropcore_{op}"
        return hookimpl(impl)

    for op in ops:
        setattr(module, f"cropcore_{op}", make_op(op))
    return module


@pytest.fixture
def register_backend() -> Iterator[Callable[..., types.ModuleType]]:
    """Register fake backends for one test; they are removed afterwards."""
    added: list[str] = []

    def register(name: str, **kwargs) -> types.ModuleType:
        module = make_backend_module(name, **kwargs)
        registry.register(module, name=name)
        added.append(name)
        return module

    yield register
    for name in added:
        if registry.get(name) is not None:
            registry.unregister(name)


@pytest.fixture(autouse=True)
def _clean_dispatch_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CROPCORE_BACKEND", raising=False)
    monkeypatch.delenv("CROPCORE_PRIORITY", raising=False)
    monkeypatch.delenv("CROPCORE_MAX_OUTPUT_BYTES", raising=False)
    config.reload()
    yield
    cropcore.set_priority(None)
    monkeypatch.undo()
    config.reload()


class CropcoreEnv:
    """Sets ``CROPCORE_*`` variables for one test and has cropcore read them again.

    cropcore reads its environment once (cropcore.config), so a test changes it as a program
    would: change ``os.environ``, then :func:`cropcore.config.reload`. The autouse fixture above
    restores both after the test.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch

    def set(self, name: str, value: str) -> None:
        self._monkeypatch.setenv(name, value)
        config.reload()

    def delete(self, name: str) -> None:
        self._monkeypatch.delenv(name, raising=False)
        config.reload()


@pytest.fixture
def cropcore_env(monkeypatch: pytest.MonkeyPatch) -> CropcoreEnv:
    """Set or delete ``CROPCORE_*`` environment variables for one test (:class:`CropcoreEnv`)."""
    return CropcoreEnv(monkeypatch)


@pytest.fixture
def image() -> np.ndarray:
    """A 2x4x5x3 float32 batch whose values are their own flat index."""
    return np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
