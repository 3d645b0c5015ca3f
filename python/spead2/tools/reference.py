"""The reference spead2 (4.5.1 from PyPI) in a virtualenv of its own.

The one place that finds or creates it: the test suite (``tests/refvenv.py``),
``spead2_bench --compare-reference`` and the scripts in ``bench/`` all use
:func:`ensure`.  The two packages are both called ``spead2``, so the
reference only ever runs in a subprocess of that virtualenv's interpreter,
with :func:`clean_env` (no ``PYTHONPATH`` pointing at this package, no
sanitizer preloads) and a working directory outside any checkout.

Location: ``$SPEAD2_REF_VENV`` if set, else ``~/.cache/spead2/ref-4.5.1``
(``$XDG_CACHE_HOME`` honoured).  It holds spead2 4.5.1, numpy, numba and
scipy (the benchmarks run numba place callbacks in it).  Creation is
idempotent and guarded by a lock file, so processes running in parallel do
not race.
"""

import fcntl
import os
import shutil
import subprocess
import sys

VERSION = "4.5.1"
REQUIREMENTS = (f"spead2=={VERSION}", "numpy", "numba", "scipy")
#: How long pip may take.
INSTALL_TIMEOUT = 900

#: Environment variables that must not reach the reference's interpreter.
DROP_ENV = (
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV",
    "LD_PRELOAD", "LD_LIBRARY_PATH", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS",
    "SPEAD2_EXPECT_ASAN",
)

#: Phrases in pip's output that mean "could not reach the package index".
NETWORK_ERRORS = (
    "NewConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "Max retries exceeded",
    "Temporary failure in name resolution", "Name or service not known", "Network is unreachable",
    "No route to host", "Connection refused", "Connection reset", "ProxyError", "SSLError",
    "Could not fetch URL", "connection broken",
    # No candidate at all for a release that certainly exists: the index could not be read.
    "(from versions: none)",
)

_MARKER = ".spead2-ref-complete"


class ReferenceSetupError(RuntimeError):
    """The reference virtualenv could not be made.  `network` is true when
    the reason is that PyPI could not be reached."""

    def __init__(self, message, network=False):
        super().__init__(message)
        self.network = network


def default_venv():
    env = os.environ.get("SPEAD2_REF_VENV")
    if env:
        return os.path.expanduser(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "spead2", f"ref-{VERSION}")


def clean_env(extra_drop_prefixes=()):
    """The environment for a reference subprocess (see the module docstring)."""
    env = {k: v for k, v in os.environ.items()
           if k not in DROP_ENV and not (extra_drop_prefixes and k.startswith(tuple(extra_drop_prefixes)))}
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def python_in(venv):
    return os.path.join(venv, "bin", "python")


def _run(cmd, timeout):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          env=clean_env(), cwd="/", stdin=subprocess.DEVNULL)


def check(python):
    """The spead2 version `python` imports with everything the tools need, or None."""
    try:
        proc = _run([python, "-c", "import numpy, numba, scipy, spead2, spead2.recv, spead2.send; "
                                   "print(spead2.__version__)"], timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _complete(venv):
    marker = os.path.join(venv, _MARKER)
    try:
        with open(marker) as f:
            return os.path.exists(python_in(venv)) and f.read().strip() == VERSION
    except OSError:
        return False


def ensure(venv=None, progress=None):
    """The interpreter of the reference virtualenv, created (or completed) on
    demand.  Raises :class:`ReferenceSetupError`."""
    venv = os.path.abspath(venv or default_venv())
    if _complete(venv):
        return python_in(venv)
    say = progress or (lambda message: None)
    os.makedirs(os.path.dirname(venv), exist_ok=True)
    with open(venv + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(venv):   # another process made it while we waited
            return python_in(venv)
        python = python_in(venv)
        if not os.path.exists(python):
            say(f"creating the reference virtualenv {venv}")
            base = sys.executable or shutil.which("python3") or "python3"
            proc = _run([base, "-m", "venv", venv], timeout=300)
            if proc.returncode != 0:
                raise ReferenceSetupError(f"python -m venv {venv} failed:\n{proc.stdout}\n{proc.stderr}")
        if check(python) != VERSION:
            say(f"installing {' '.join(REQUIREMENTS)} into {venv}")
            try:
                proc = _run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *REQUIREMENTS],
                            timeout=INSTALL_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise ReferenceSetupError(f"PyPI unreachable: pip install timed out after {INSTALL_TIMEOUT} s",
                                     network=True) from None
            if proc.returncode != 0:
                output = proc.stdout + proc.stderr
                lines = [line for line in output.splitlines() if line.strip()]
                if any(phrase.lower() in output.lower() for phrase in NETWORK_ERRORS):
                    raise ReferenceSetupError("PyPI unreachable: " + (lines[-1] if lines else "pip install failed"),
                                         network=True)
                raise ReferenceSetupError(f"pip install {' '.join(REQUIREMENTS)} failed:\n{output}")
        version = check(python)
        if version != VERSION:
            raise ReferenceSetupError(f"the reference virtualenv {venv} has spead2 {version}, not {VERSION}")
        with open(os.path.join(venv, _MARKER), "w") as f:
            f.write(VERSION + "\n")
    return python


if __name__ == "__main__":  # pragma: no cover - a convenience for humans
    print(ensure(progress=lambda m: print(m, file=sys.stderr)))
