"""The driver's state for one run: the interpreters measured
(:class:`Implementation`, ours and the reference), the traffic files, the
worker and sender subprocesses, the emulated ibverbs device, progress
output (:class:`Context`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

from .session import BenchError, Session
from .traffic import generate, split_pcap

#: Environment variables that point a process at the emulated ibverbs device.
_IBV_ENV_PREFIXES = ("SPEAD2_EMU_", "SPEAD2_IBV_LIBRARY_OVERRIDE")

class Implementation:
    """A Python interpreter with a spead2 (ours, or the reference)."""

    def __init__(self, name, python, env):
        self.name = name
        self.python = python
        self.env = env
        self.info = None





class Progress:
    """One status line on stderr when it is a terminal; silent otherwise."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.shown = False

    def __call__(self, text):
        if not self.enabled:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        sys.stderr.write("\r\x1b[K" + text[:width])
        sys.stderr.flush()
        self.shown = True

    def clear(self):
        if self.enabled and self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False

    def note(self, text):
        """A line that stays (errors, warnings): always printed."""
        self.clear()
        print(f"spead2_bench: {text}", file=sys.stderr)


def _repo_root():
    """The source tree this package belongs to (python/spead2/tools/bench), when it runs from one."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, *[os.pardir] * 4))
    if os.path.exists(os.path.join(root, "tests", "ibv_emulator", "build.sh")):
        return root
    return None


def _find_emulator_source():
    """tests/ibv_emulator of the source tree this file is in, or of the
    working directory or one of its parents."""
    root = _repo_root()
    candidates = [root] if root else []
    here = os.getcwd()
    while True:
        candidates.append(here)
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    for c in candidates:
        path = os.path.join(c, "tests", "ibv_emulator")
        if os.path.exists(os.path.join(path, "build.sh")):
            return path
    return None


def _cmake_source(out):
    """The source directory of the cmake build in ``out``/cmake-build, if there is one."""
    try:
        with open(os.path.join(out, "cmake-build", "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("CMAKE_HOME_DIRECTORY:"):
                    return os.path.realpath(line.split("=", 1)[1].strip())
    except OSError:
        pass
    return None


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "spead2-bench")


class Context:
    def __init__(self, args, progress):
        self.args = args
        self.progress = progress
        self.sessions = {}
        self._sender = None
        self.files = {}
        self.parts = {}
        self.step = 0
        self.total = 0
        self.tmp = tempfile.mkdtemp(prefix="spead2-bench-", dir=args.tmpdir)
        self.log_dir = os.path.join(self.tmp, "logs")
        os.makedirs(self.log_dir)

    def traffic_files(self, traffic):
        key = traffic.key()
        if key not in self.files:
            self.files[key] = generate(traffic, self.tmp, self.progress)
        return self.files[key]

    def pcap_parts(self, traffic, n):
        """The pcap file split into ``n`` capture files (heap i in file i mod n)."""
        key = (traffic.key(), n)
        if key not in self.parts:
            self.progress(f"splitting the {traffic.packet_size}-byte capture into {n} files")
            self.parts[key] = split_pcap(traffic, self.traffic_files(traffic)["pcap"], n)
        return self.parts[key]

    def drop_traffic(self, traffic):
        paths = list(self.files.pop(traffic.key(), {}).values())
        for key in [k for k in self.parts if k[0] == traffic.key()]:
            paths += self.parts.pop(key)
        if not self.args.keep_traffic:
            for path in paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def session(self, impl, transport):
        key = (impl.name, transport.name)
        s = self.sessions.get(key)
        if s is None or s.dead:
            env = dict(impl.env)
            env.update(transport.worker_env())
            log = os.path.join(self.log_dir, f"{impl.name}-{transport.name}.log")
            s = Session(impl.python, "worker", env, self.tmp, log)
            self.sessions[key] = s
        return s

    def close_session(self, impl, transport):
        s = self.sessions.pop((impl.name, transport.name), None)
        if s is not None:
            s.close()

    def sender(self):
        if self._sender is None or self._sender.dead:
            env = dict(os.environ)
            env.pop("SPEAD2_IBV_LIBRARY_OVERRIDE", None)
            self._sender = Session(sys.executable, "sender", env, self.tmp,
                                   os.path.join(self.log_dir, "sender.log"))
        return self._sender

    def emulator_library(self):
        """(path, None) of the emulated ibverbs library, or (None, reason)."""
        given = self.args.ibv_emulator or os.environ.get("SPEAD2_BENCH_IBV_EMULATOR")
        if given and given.endswith(".so"):
            if os.path.exists(given):
                return os.path.abspath(given), None
            return None, f"emulator library {given} does not exist"
        if given:
            source = os.path.abspath(given)
        else:
            # The test device shipped in the package (wheels built with the
            # rdma-core headers): no source tree needed.
            from spead2.tools import ibv_emulator

            packaged = ibv_emulator.packaged_library()
            if packaged is not None:
                return str(packaged), None
            source = _find_emulator_source()
        build = os.path.join(source, "build.sh") if source else None
        out = os.path.join(cache_dir(), "ibv_emulator")
        if build and _cmake_source(out) not in (None, os.path.realpath(source)):
            # Built from another source tree (say another git worktree): cmake
            # refuses to reuse that build directory, so this tree gets its own.
            tag = hashlib.sha1(os.path.realpath(source).encode()).hexdigest()[:12]
            out = os.path.join(cache_dir(), f"ibv_emulator-{tag}")
        lib = os.path.join(out, "libspead2_ibv_emulator.so")
        if not build or not os.path.exists(build):
            if not given and os.path.exists(lib):
                return lib, None  # built by an earlier run from a source tree
            return None, ("emulated device not found (give --ibv-emulator with the library or "
                          "the tests/ibv_emulator directory of a source tree)")
        newest = max(os.path.getmtime(os.path.join(source, f)) for f in os.listdir(source))
        if os.path.exists(lib) and os.path.getmtime(lib) >= newest:
            return lib, None
        self.progress("building the emulated ibverbs device (tests/ibv_emulator/build.sh)")
        from spead2.tools import reference   # driver side only

        env = {k: v for k, v in os.environ.items() if k not in reference.DROP_ENV}
        try:
            proc = subprocess.run(["bash", build, out], capture_output=True, text=True, timeout=900,
                                  stdin=subprocess.DEVNULL, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"building the emulated device failed: {exc}"
        if proc.returncode != 0 or not os.path.exists(lib):
            lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "rror" in ln), lines[-1] if lines else "no output")
            return None, f"building the emulated device with {build} failed: {why}"
        return lib, None

    def close(self):
        for s in list(self.sessions.values()):
            s.close()
        self.sessions.clear()
        if self._sender is not None:
            self._sender.close()
        if self.args.keep_traffic:
            self.progress.note(f"traffic and worker logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)





def clean_ref_env():
    from spead2.tools import reference as _reference   # driver side only

    return _reference.clean_env(_IBV_ENV_PREFIXES)


def reference_python(venv, progress):
    """The interpreter of the reference virtualenv (spead2.tools.reference),
    created (or completed) on demand."""
    from spead2.tools import reference as _reference   # driver side only

    venv = venv or _reference.default_venv()
    allow_any = os.environ.get("SPEAD2_BENCH_ALLOW_ANY_REFERENCE") == "1"
    python = _reference.python_in(venv)
    if allow_any and os.path.exists(python) and _reference.check(python):
        return python
    try:
        return _reference.ensure(venv, progress)
    except _reference.ReferenceSetupError as exc:
        raise BenchError(str(exc)) from None


def ours_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(_IBV_ENV_PREFIXES)}
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
