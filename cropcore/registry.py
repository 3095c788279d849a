"""Who is installed: entry-point discovery of backend plugins, registered with pluggy.

Discovery imports each plugin *module* (which, by the contract in :mod:`cropcore.hookspecs`,
imports no framework) and asks it for its :class:`BackendInfo`. A plugin that fails to import, or
whose hooks do not match the specification, is recorded as broken with its error; the others are
unaffected. Whether a backend can really run (its framework imports, a GPU is present) is checked
lazily, the first time it is probed or selected.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from cropcore import hookspecs
from cropcore.hookspecs import BackendInfo
from cropcore.ops import OPS

__all__ = ["ENTRY_POINT_GROUP", "Backend", "BackendInfo", "Registry", "registry"]

logger = logging.getLogger("cropcore.registry")

#: The entry-point group backends register under.
ENTRY_POINT_GROUP = "cropcore.backends"


@dataclass
class Backend:
    """One discovered backend plugin: its info, its hooks, and whether it can run.

    ``status`` is ``"available"`` (probed and runnable), ``"installed"`` (its requirements are
    present but it has not been probed yet), ``"unavailable"`` (``reason`` says why) or ``"broken"``
    (the plugin failed to load; ``reason`` holds the error).
    """

    name: str
    info: BackendInfo | None = None
    module: ModuleType | None = None
    distribution: str = ""
    entry_point: str = ""
    status: str = "installed"
    reason: str = ""
    ops: tuple[str, ...] = ()
    _hooks: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def aliases(self) -> tuple[str, ...]:
        return self.info.aliases if self.info else ()

    @property
    def version(self) -> str:
        """The version the plugin states, else that of the distribution of its first requirement."""
        if self.info is None:
            return ""
        if self.info.version or not self.info.requires:
            return self.info.version
        return _distribution_version(self.info.requires[0])

    @property
    def devices(self) -> tuple[str, ...]:
        return self.info.devices if self.info else ()

    @property
    def install_hint(self) -> str:
        return self.info.install_hint if self.info else ""

    def hook(self, op: str) -> Callable[..., Any] | None:
        """The plugin's implementation of op ``op`` (``"crop_and_resize"``, ...), or ``None``."""
        return self._hooks.get(f"cropcore_{op}")

    def peak_bytes(self, call: Any, result_bytes: int) -> int:
        """Host memory the plugin needs at its peak for ``call`` (``cropcore_backend_peak_bytes``).

        Without the hook: the result's bytes on a CPU backend, nothing on a device-only one.
        """
        hook = self._hooks.get("cropcore_backend_peak_bytes")
        if hook is not None:
            return int(hook(call=call))
        return result_bytes if self.info is None or "cpu" in self.info.devices else 0

    def declines(self, call: Any) -> str | None:
        hook = self._hooks.get("cropcore_backend_declines")
        return hook(call=call) if hook is not None else None

    def probe(self) -> Backend:
        """Run the backend's availability check once (it may import its framework)."""
        if self.status != "installed":
            return self
        with self._lock:
            if self.status != "installed":
                return self
            check = self._hooks.get("cropcore_backend_check")
            try:
                reason = check() if check is not None else None
            except Exception as exc:  # a check that raises means "cannot run"; say why
                reason = f"{type(exc).__name__}: {exc}"
            self.status, self.reason = ("unavailable", str(reason)) if reason else ("available", "")
            logger.debug("probed backend %r: %s %s", self.name, self.status, self.reason)
        return self

    def as_dict(self) -> dict[str, Any]:
        """A plain summary (what ``cropcore.backends()`` users usually want to print)."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "version": self.version,
            "status": self.status,
            "reason": self.reason,
            "devices": list(self.devices),
            "array_library": self.info.array_library if self.info else "",
            "description": self.info.description if self.info else "",
            "methods": list(self.info.methods) if self.info else [],
            "dtypes": list(self.info.dtypes) if self.info else [],
            "autograd": self.info.autograd if self.info else False,
            "ops": list(self.ops),
            "distribution": self.distribution,
        }


class Registry:
    """Backends discovered through entry points (or registered directly, for tests and notebooks)."""

    def __init__(self, group: str = ENTRY_POINT_GROUP) -> None:
        self.group = group
        self._lock = threading.RLock()
        self._backends: dict[str, Backend] | None = None
        self._ready = False  # set once discovery has filled _backends (it fills it in place)
        self._names: dict[str, str] = {}  # name or alias -> name
        self._pm: pluggy.PluginManager | None = None
        self._direct: dict[str, ModuleType] = {}  # registered with register(), kept over refresh()
        #: Changes whenever the set of backends changes (discovery, refresh, register,
        #: unregister): the dispatcher's cached verdicts are valid for one generation only.
        self.generation = 0

    # -- discovery ---------------------------------------------------------------------------------

    def _ensure(self) -> dict[str, Backend]:
        backends = self._backends
        # _ready, not _backends: another thread's discovery may be filling _backends right now.
        if backends is None or not self._ready:
            with self._lock:
                if not self._ready:
                    self._discover()
                    self._ready = True
                    self.generation += 1
                backends = self._backends
        assert backends is not None
        return backends

    def refresh(self) -> None:
        """Forget what was discovered; the next look-up scans the entry points again."""
        with self._lock:
            self._ready = False
            self._backends = None
            self.generation += 1

    def _discover(self) -> None:
        self._pm = pluggy.PluginManager("cropcore")
        self._pm.add_hookspecs(hookspecs)
        self._backends, self._names = {}, {}
        for ep in _entry_points(self.group):
            dist = _dist_name(ep)
            try:
                module = ep.load()
            except BaseException as exc:  # a plugin must never take the others down with it
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._add_broken(ep.name, dist, ep.value, exc)
                continue
            self._add(module, ep.name, dist, ep.value)
        for name, module in self._direct.items():
            self._add(module, name, "", getattr(module, "__name__", ""))
        logger.debug("discovered backends: %s", sorted(self._backends))

    def _add_broken(self, name: str, dist: str, value: str, exc: BaseException) -> None:
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        logger.warning("cropcore backend plugin %r (%s) failed to load: %s", name, value, reason)
        assert self._backends is not None
        self._backends.setdefault(
            name,
            Backend(
                name=name, distribution=dist, entry_point=value, status="broken", reason=reason
            ),
        )

    def _add(self, module: ModuleType, ep_name: str, dist: str, value: str) -> Backend | None:
        assert self._pm is not None
        assert self._backends is not None
        try:
            self._pm.register(module, name=f"cropcore-backend-{ep_name}")
            info = module.cropcore_backend_info()
            if not isinstance(info, BackendInfo):
                raise TypeError(
                    f"cropcore_backend_info() returned {type(info).__name__}, not BackendInfo"
                )
            unknown = [c.name for c in self._pm.get_hookcallers(module) or () if not c.has_spec()]
            if unknown:
                raise TypeError(f"unknown hook(s) {', '.join(unknown)}: not in cropcore.hookspecs")
            hooks = dict(_impls(self._pm, module))
            kernels = [name for name, op in OPS.items() if op.hook in hooks]
            # An op cropcore runs itself (crop2d's slice) is offered by every backend.
            ops = tuple(name for name, op in OPS.items() if op.hook in hooks or op.in_core)
            if not kernels:
                raise TypeError(
                    "the plugin implements none of the op hooks (cropcore_crop_and_resize, ...)"
                )
            for key in (info.name, *info.aliases):
                if key in self._names and self._names[key] != info.name:
                    raise ValueError(
                        f"backend name or alias {key!r} is already taken by {self._names[key]!r}"
                    )
            if info.name in self._backends:
                raise ValueError(f"backend name {info.name!r} is registered twice")
        except Exception as exc:
            if self._pm.is_registered(module):
                self._pm.unregister(module)
            self._add_broken(ep_name, dist, value, exc)
            return None
        backend = Backend(
            name=info.name,
            info=info,
            module=module,
            distribution=dist,
            entry_point=value,
            ops=ops,
            _hooks=hooks,
        )
        missing = [m for m in info.requires if not _importable(m)]
        if missing:
            backend.status = "unavailable"
            hint = f"; install it with: {info.install_hint}" if info.install_hint else ""
            backend.reason = f"requires {', '.join(missing)}, which is not installed{hint}"
        self._backends[info.name] = backend
        for key in (info.name, *info.aliases):
            self._names[key] = info.name
        return backend

    def register(self, module: ModuleType, name: str | None = None) -> Backend:
        """Register a plugin module directly, without an entry point (tests, notebooks).

        Raises ``ValueError`` if it is malformed or its name is taken.
        """
        with self._lock:
            self._ensure()
            ep_name = name or getattr(module, "__name__", "plugin")
            backend = self._add(module, ep_name, "", getattr(module, "__name__", ""))
            if backend is None:
                assert self._backends is not None
                failed = self._backends.pop(ep_name)
                raise ValueError(f"could not register backend plugin {ep_name!r}: {failed.reason}")
            self._direct[ep_name] = module
            self.generation += 1
            return backend

    def unregister(self, name: str) -> None:
        """Remove a backend (registered directly or discovered) until the next :meth:`refresh`."""
        with self._lock:
            backends = self._ensure()
            backend = backends.pop(self.resolve(name) or name)
            self._direct = {k: m for k, m in self._direct.items() if m is not backend.module}
            self._names = {k: v for k, v in self._names.items() if v != backend.name}
            if backend.module is not None and self._pm and self._pm.is_registered(backend.module):
                self._pm.unregister(backend.module)
            self.generation += 1

    # -- look-up -----------------------------------------------------------------------------------

    def resolve(self, name: str) -> str | None:
        """The backend name for a name or alias (case-insensitive), or ``None``."""
        self._ensure()
        return self._names.get(name) or self._names.get(name.lower())

    def get(self, name: str) -> Backend | None:
        resolved = self.resolve(name)
        backends = self._ensure()
        return backends.get(resolved) if resolved else backends.get(name)

    def all(self) -> list[Backend]:
        return sorted(self._ensure().values(), key=lambda b: b.name)

    def names(self) -> list[str]:
        return [b.name for b in self.all()]


def _impls(
    pm: pluggy.PluginManager, module: ModuleType
) -> Iterable[tuple[str, Callable[..., Any]]]:
    """(hook name, function) for each hook ``module`` implements."""
    for caller in pm.get_hookcallers(module) or ():
        for impl in caller.get_hookimpls():
            if impl.plugin is module:
                yield caller.name, impl.function


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    eps = importlib.metadata.entry_points(group=group)
    seen: dict[tuple[str, str], importlib.metadata.EntryPoint] = {}
    for ep in eps:  # the same distribution found twice on sys.path lists its entry points twice
        seen.setdefault((_dist_name(ep), ep.name), ep)
    # cropcore's own backends register first, so a plugin cannot take over their names.
    return sorted(seen.values(), key=lambda ep: _dist_name(ep) != "cropcore")


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else ""


@functools.cache
def _distribution_version(module: str) -> str:
    """The version of the distribution that provides top-level module ``module`` ("" if none)."""
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        pass
    if not _importable(module):  # not installed: skip the scan of every distribution (~0.2 s)
        return ""
    for dist in importlib.metadata.packages_distributions().get(module, ()):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


#: The process-wide registry behind :func:`cropcore.backends` and dispatch.
registry = Registry()
