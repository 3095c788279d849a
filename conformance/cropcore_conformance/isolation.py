"""Running cases in a worker process, so that a backend that crashes, aborts or hangs fails those
cases by name instead of ending the run (``cropcore conformance NAME --isolate``).

Requirements:

- **A crash fails one case, by name.** The worker runs one case at a time and sends each outcome
  back before it takes the next, so when it dies the case it was running is known exactly: that
  case fails with "the backend's process died with signal 11 (SIGSEGV) on this input" (and the
  first lines of the worker's ``faulthandler`` report), a new worker starts, and the run goes on
  with the next case. A case that gives no result within the timeout is killed and fails as
  hung. The report and the exit status are the usual ones.
- **The worker sees the same backend.** It is a fresh ``python -m cropcore_conformance.isolation``
  with the parent's ``sys.path``; it finds backends through their entry points, and imports and
  registers the plugin modules it is given (``--plugin MODULE``; a backend the parent registered
  at run time from an importable module is passed on by itself).
- **The fast path stays.** Without isolation no worker starts; with it, a case costs one
  round trip through a pipe (a full run on the reference backend: see docs/conformance.md).

POSIX only (the result pipe is passed as a file descriptor).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from cropcore_conformance.cases import Case, Outcome

__all__ = ["DEFAULT_TIMEOUT", "IsolatedRunner", "IsolationError", "plugin_modules", "register"]

#: Seconds a case may run in a worker before it counts as hung and the worker is killed.
DEFAULT_TIMEOUT = 120.0
#: Seconds a new worker may take to import cropcore, the plugins and the suite.
STARTUP_TIMEOUT = 300.0


class IsolationError(RuntimeError):
    """A worker process could not be started (a plugin that cannot be imported there, ...)."""


def register(module_name: str) -> str:
    """Import plugin module ``module_name`` and register it with cropcore's registry, unless it is
    registered already (by an entry point, or earlier); return its backend name."""
    from cropcore.registry import registry

    module = importlib.import_module(module_name)
    info = getattr(module, "cropcore_backend_info", None)
    if info is None:
        raise ValueError(
            f"plugin {module_name!r} has no cropcore_backend_info hook: it is not a cropcore backend"
        )
    name = info().name
    known = registry.get(name)
    if known is None:
        registry.register(module, name=name)
    elif known.module is not module and getattr(known.module, "__name__", None) != module_name:
        raise ValueError(
            f"plugin {module_name!r} names its backend {name!r}, which is taken by "
            f"{known.entry_point or known.module!r}"
        )
    return name


def plugin_modules(backend: Any) -> list[str]:
    """The module a worker must import to find ``backend`` (a ``cropcore.registry.Backend``):
    none for one found through an entry point; its module for one registered at run time."""
    module = backend.module
    if backend.distribution or module is None:
        return []
    if getattr(module, "__file__", None) is None:
        raise IsolationError(
            f"backend {backend.name!r} was registered at run time from module "
            f"{getattr(module, '__name__', module)!r}, which a worker process cannot import: "
            "put it in an importable module and pass --plugin MODULE, or register it with an "
            "entry point in the group cropcore.backends"
        )
    return [module.__name__]


def _import_root(module: ModuleType) -> str:
    """The ``sys.path`` entry ``module`` was imported from."""
    path = Path(module.__file__ or "")
    depth = module.__name__.count(".") + (1 if hasattr(module, "__path__") else 0)
    return str(path.parents[depth])


def _describe_death(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"the backend's process died with signal {-returncode} ({name}) on this input"
    return f"the backend's process exited with status {returncode} on this input"


class IsolatedRunner:
    """Run cases in a worker process, restarted after each crash or hang.

    Args:
        backend: the name of the backend under test.
        reference: the reference backend's name.
        tolerances: the backend's declared tolerance classes (``{pattern: class}``).
        seed, max_examples, device, shrink: as :class:`cropcore_conformance.Context`'s.
        plugins: plugin modules the worker imports and registers first.
        timeout: seconds a case may take before it fails as hung.
    """

    def __init__(
        self,
        backend: str,
        *,
        reference: str = "numpy",
        tolerances: dict[str, str] | None = None,
        seed: int = 0,
        max_examples: int = 40,
        device: str | None = None,
        shrink: bool = True,
        plugins: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.timeout = float(timeout)
        self.plugins = list(dict.fromkeys(plugins))
        self.config = {
            "backend": backend,
            "reference": reference,
            "tolerances": dict(tolerances or {}),
            "seed": seed,
            "max_examples": max_examples,
            "device": device,
            "shrink": shrink,
            "plugins": self.plugins,
        }
        self.workers_started = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._results: int | None = None  # the read end of the result pipe
        self._buffer = b""
        self._log: IO[bytes] | None = None

    # -- the worker --------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        roots = [p for p in sys.path if p]
        for name in self.plugins:
            module = sys.modules.get(name)
            if module is not None and getattr(module, "__file__", None):
                roots.insert(0, _import_root(module))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots))
        env.setdefault("PYTHONFAULTHANDLER", "1")
        return env

    def _start(self) -> None:
        read_end, write_end = os.pipe()
        # The worker's output: kept open as long as the worker lives (closed by _stop).
        self._log = tempfile.TemporaryFile(prefix="cropcore-conformance-worker-")  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "cropcore_conformance.isolation", str(write_end)],
                stdin=subprocess.PIPE,
                stdout=self._log,
                stderr=self._log,
                pass_fds=(write_end,),
                env=self._environment(),
            )
        finally:
            os.close(write_end)
        self._results, self._buffer = read_end, b""
        self.workers_started += 1
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(self.config).encode() + b"\n")
        self._process.stdin.flush()
        line = self._read_line(STARTUP_TIMEOUT)
        if not isinstance(line, dict) or line.get("ready") is not True:
            tail = self._log_tail(0, last=True)
            self._stop()
            why = (
                line.get("error")
                if isinstance(line, dict)
                else {
                    "eof": "it died",
                    "timeout": f"no answer in {STARTUP_TIMEOUT:g} s",
                }.get(str(line), line)
            )
            raise IsolationError(f"the conformance worker process did not start: {why} {tail}")

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(OSError):
                if process.stdin is not None:
                    process.stdin.close()
            if process.poll() is None:
                process.kill()
            process.wait()
        if self._results is not None:
            os.close(self._results)
            self._results = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stop the worker (it also stops when its stdin closes)."""
        self._stop()

    def __enter__(self) -> IsolatedRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_line(self, timeout: float) -> dict[str, Any] | str:
        """The worker's next message, or ``"eof"`` (it died) or ``"timeout"``."""
        assert self._results is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            ready, _, _ = select.select([self._results], [], [], remaining)
            if not ready:
                return "timeout"
            chunk = os.read(self._results, 1 << 16)
            if not chunk:
                return "eof"
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _log_tail(self, offset: int, last: bool = False) -> str:
        """The worker's output since ``offset``, in a few lines (faulthandler's report first)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(offset)
        lines = [
            " ".join(line.split())
            for line in self._log.read().decode(errors="replace").splitlines()
        ]
        noise = ("Current thread", "Thread 0x", "Extension modules", "Stack (most recent")
        lines = [line for line in lines if line and not line.startswith(noise)]
        lines = lines[-4:] if last else lines[:4]
        self._log.seek(0, os.SEEK_END)
        return f"(worker output: {' | '.join(lines)[:600]})" if lines else ""

    # -- cases -------------------------------------------------------------------------------

    def run_case(self, case: Case) -> Outcome:
        """Run ``case`` in the worker; a crash or a hang is the case's failure."""
        if self._process is None:
            self._start()
        assert self._process is not None
        assert self._process.stdin is not None
        assert self._log is not None
        offset = self._log.seek(0, os.SEEK_END)
        try:
            self._process.stdin.write(case.id.encode() + b"\n")
            self._process.stdin.flush()
        except OSError:  # died since its last case (a thread it left behind crashed)
            pass
        message = self._read_line(self.timeout)
        if isinstance(message, dict):
            if "error" in message:  # the worker could not run the case at all
                self._stop()
                raise IsolationError(f"the conformance worker process failed: {message['error']}")
            return Outcome(**message)
        if message == "timeout":
            why = (
                f"hung: no result within {self.timeout:g} s; the backend's process was killed "
                "(--timeout sets the limit)"
            )
        else:
            self._process.wait()
            why = _describe_death(self._process.returncode)
        tail = self._log_tail(offset)
        self._stop()
        return Outcome.failed(f"{why} {tail}".strip())


# --------------------------------------------------------------------------------------------------
# The worker's side


def _serve(config: dict[str, Any], results: IO[str], requests: Iterable[str]) -> None:
    from cropcore_conformance.cases import Context
    from cropcore_conformance.suite import all_cases, resolve_backend

    for module in config["plugins"]:
        register(module)
    backend = resolve_backend(config["backend"])
    resolve_backend(config["reference"])
    ctx = Context(
        backend,
        config["reference"],
        config["tolerances"],
        config["seed"],
        config["max_examples"],
        config["device"],
        config["shrink"],
    )
    cases = {case.id: case for case in all_cases()}
    results.write(json.dumps({"ready": True}) + "\n")
    results.flush()
    for line in requests:
        case_id = line.strip()
        if not case_id:
            continue
        outcome = cases[case_id].run(ctx)
        results.write(json.dumps(asdict(outcome)) + "\n")
        results.flush()


def _worker(argv: Sequence[str]) -> int:
    import faulthandler

    faulthandler.enable()
    results = os.fdopen(int(argv[0]), "w", encoding="utf-8")
    config = json.loads(sys.stdin.readline())
    try:
        _serve(config, results, sys.stdin)
    except Exception as exc:  # reported to the parent, which raises IsolationError
        results.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        results.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
