"""The reference spead2 (4.5.1 from PyPI), in a virtualenv of its own, for the
interoperability tests.

The tests never import the reference: they run it as a subprocess, so that the
two packages (both called ``spead2``) never meet in one interpreter.

* :func:`reference_python` returns the path of a Python interpreter that has
  ``spead2==4.5.1`` and ``numpy``.  The virtualenv is created on first use and
  cached: in ``$SPEAD2_REF_VENV`` if set, else in
  ``~/.cache/spead2-tests/ref-4.5.1``.  Creation is idempotent and guarded by a
  lock file, so test processes running in parallel do not race.  It returns
  ``None`` only when the install failed for network reasons (PyPI
  unreachable); :func:`unavailable_reason` then says why.  Any other failure
  raises :class:`ReferenceSetupError`.
* :func:`run_reference` runs a snippet of code under that interpreter and
  returns the :class:`subprocess.CompletedProcess`; :func:`start_reference`
  starts one in the background (for receivers that must be listening before
  our side sends).  Both skip the calling test (``pytest.skip``) when the
  reference is unavailable.
* :func:`skip_reason` / the ``requires_reference`` marker skip a whole module.

The subprocesses run with a cleaned environment: no ``PYTHONPATH`` (which may
point at our package), no ``LD_PRELOAD`` or sanitizer options (the test suite
also runs under AddressSanitizer), and cwd ``/`` so that nothing from this
checkout can be imported by accident.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
from typing import Optional

REF_VERSION = "4.5.1"
#: What the reference virtualenv gets, besides pip's own.
REF_REQUIREMENTS = (f"spead2=={REF_VERSION}", "numpy")
#: Written into the virtualenv once it is complete and checked.
_MARKER = ".spead2-ref-complete"
#: How long the pip install may take.
_INSTALL_TIMEOUT = 900

#: Environment variables that must not leak into the reference's interpreter.
_DROP_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "VIRTUAL_ENV",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "ASAN_OPTIONS",
    "UBSAN_OPTIONS",
    "LSAN_OPTIONS",
    "SPEAD2_EXPECT_ASAN",
)

#: Phrases in pip's output that mean "could not reach the package index".
_NETWORK_ERRORS = (
    "NewConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "No route to host",
    "Connection refused",
    "Connection reset",
    "ProxyError",
    "SSLError",
    "Could not fetch URL",
    "connection broken",
    # No candidate at all for a release that certainly exists: the index
    # (or every index pip was told about) could not be read.
    "(from versions: none)",
)


class ReferenceSetupError(RuntimeError):
    """The reference virtualenv could not be created for a reason other than the network."""


_cached: Optional[tuple] = None  # (python path or None, reason)


def venv_dir() -> pathlib.Path:
    """Where the reference virtualenv lives."""
    env = os.environ.get("SPEAD2_REF_VENV")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "spead2-tests" / f"ref-{REF_VERSION}"


def clean_env() -> dict:
    """The environment for a reference subprocess (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def _python_in(venv: pathlib.Path) -> pathlib.Path:
    return venv / "bin" / "python"


def _is_complete(venv: pathlib.Path) -> bool:
    marker = venv / _MARKER
    return _python_in(venv).exists() and marker.exists() and marker.read_text().strip() == REF_VERSION


@contextlib.contextmanager
def _locked(path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _base_python() -> str:
    """The interpreter to create the virtualenv from.

    ``sys.executable`` may itself be a virtualenv's; ``venv`` handles that
    (the new one points at the same base installation).
    """
    return sys.executable or shutil.which("python3") or "python3"


def _run(cmd, timeout):
    return subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        cwd="/",
        stdin=subprocess.DEVNULL,
    )


def _create(venv: pathlib.Path) -> tuple:
    """Create and fill `venv`; returns (python, reason) like :func:`_cached`."""
    if venv.exists():
        shutil.rmtree(venv)  # a half-made one from an interrupted run
    proc = _run([_base_python(), "-m", "venv", venv], timeout=300)
    if proc.returncode != 0:
        raise ReferenceSetupError(f"python -m venv {venv} failed:\n{proc.stdout}\n{proc.stderr}")
    python = _python_in(venv)
    try:
        proc = _run(
            [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *REF_REQUIREMENTS],
            timeout=_INSTALL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(venv, ignore_errors=True)
        return None, f"PyPI unreachable: pip install timed out after {_INSTALL_TIMEOUT} s"
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        shutil.rmtree(venv, ignore_errors=True)
        if any(phrase.lower() in output.lower() for phrase in _NETWORK_ERRORS):
            lines = [line for line in output.splitlines() if line.strip()]
            return None, "PyPI unreachable: " + (lines[-1] if lines else "pip install failed")
        raise ReferenceSetupError(f"pip install {' '.join(REF_REQUIREMENTS)} failed:\n{output}")
    check = _run(
        [python, "-c", "import numpy, spead2, spead2.recv, spead2.send; print(spead2.__version__)"], timeout=120
    )
    if check.returncode != 0 or check.stdout.strip() != REF_VERSION:
        raise ReferenceSetupError(f"the reference virtualenv does not work:\n{check.stdout}\n{check.stderr}")
    (venv / _MARKER).write_text(REF_VERSION + "\n")
    return str(python), ""


def reference_python() -> Optional[str]:
    """Path of a Python with spead2==4.5.1 and numpy, or None if PyPI is unreachable."""
    global _cached
    if _cached is None:
        venv = venv_dir()
        if _is_complete(venv):
            _cached = (str(_python_in(venv)), "")
        else:
            with _locked(venv.parent / (venv.name + ".lock")):
                if _is_complete(venv):  # another process made it while we waited
                    _cached = (str(_python_in(venv)), "")
                else:
                    _cached = _create(venv)
    return _cached[0]


def unavailable_reason() -> str:
    """Why :func:`reference_python` returned None ("" if it did not)."""
    reference_python()
    return _cached[1]


def skip_reason() -> Optional[str]:
    """A reason to skip reference tests, or None if the reference is available."""
    if reference_python() is None:
        return unavailable_reason()
    return None


def _require() -> str:
    python = reference_python()
    if python is None:
        import pytest

        pytest.skip(unavailable_reason())
    return python


def _command(code: str, args) -> list:
    return [_require(), "-c", textwrap.dedent(code), *[str(a) for a in args]]


def run_reference(code: str, *args, timeout: float = 60, check: bool = True,
                  input: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run `code` (dedented) under the reference, with `args` as ``sys.argv[1:]``.

    Returns the completed process (text stdout/stderr).  With `check` (the
    default) a non-zero exit raises :class:`AssertionError` showing both
    outputs.  Skips the calling test if the reference is unavailable.
    """
    proc = subprocess.run(
        _command(code, args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        cwd="/",
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"reference snippet exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def start_reference(code: str, *args) -> subprocess.Popen:
    """Start `code` under the reference in the background (text pipes for
    stdout and stderr).  The caller must wait for it, with a timeout, or kill it."""
    return subprocess.Popen(
        _command(code, args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
        cwd="/",
    )


if __name__ == "__main__":  # pragma: no cover - a convenience for humans
    path = reference_python()
    print(path if path is not None else f"unavailable: {unavailable_reason()}")
