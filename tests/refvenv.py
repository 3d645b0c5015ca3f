"""The reference spead2 (4.5.1 from PyPI), in a virtualenv of its own, for the
interoperability tests.

The tests never import the reference: they run it as a subprocess, so that the
two packages (both called ``spead2``) never meet in one interpreter.

* :func:`reference_python` returns the path of a Python interpreter that has
  ``spead2==4.5.1`` (and numpy, numba, scipy): the virtualenv of
  :mod:`spead2.tools.reference`, the one helper that finds or creates it for
  the tests, ``spead2_bench`` and ``bench/`` alike (``$SPEAD2_REF_VENV``, else
  ``~/.cache/spead2/ref-4.5.1``).  It returns ``None`` only when the install
  failed for network reasons (PyPI unreachable); :func:`unavailable_reason`
  then says why.  Any other failure raises :class:`ReferenceSetupError`.
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

import pathlib
import subprocess
import textwrap
from typing import Optional

from spead2.tools import reference as _reference

REF_VERSION = _reference.VERSION
ReferenceSetupError = _reference.ReferenceSetupError

_cached: Optional[tuple] = None  # (python path or None, reason)


def venv_dir() -> pathlib.Path:
    """Where the reference virtualenv lives."""
    return pathlib.Path(_reference.default_venv())


def clean_env() -> dict:
    """The environment for a reference subprocess (see the module docstring)."""
    return _reference.clean_env()


def reference_python() -> Optional[str]:
    """Path of a Python with spead2==4.5.1 (and numpy, numba, scipy), or None
    if PyPI is unreachable.  Other failures raise ReferenceSetupError."""
    global _cached
    if _cached is None:
        try:
            _cached = (_reference.ensure(), "")
        except ReferenceSetupError as exc:
            if not exc.network:
                raise
            _cached = (None, str(exc))
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
