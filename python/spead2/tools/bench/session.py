"""The driver's conversation with its subprocesses (a receiving worker, a
sender): one JSON request per line on their standard input, one reply per
line on their standard output, starting with :data:`REPLY_PREFIX` so that
stray output is ignored."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import selectors
import subprocess
import sys
import time

#: Replies from workers start with this, so that stray output is ignored.
REPLY_PREFIX = "@@spead2_bench "

#: The package name the subprocesses load this directory under.
PACKAGE = "_spead2_bench"


def load_package(directory=None):
    """This directory (or ``directory``), loaded by path as the package
    :data:`PACKAGE`: so an interpreter with another spead2 (the reference),
    which cannot import ``spead2.tools.bench``, runs the same code."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    directory = directory or os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(directory, "__init__.py"),
                                                  submodule_search_locations=[directory])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return package


def run_role(role, directory):
    """``main()`` of the module ``role`` (``worker`` or ``sender``) of the package in ``directory``."""
    load_package(directory)
    return importlib.import_module(f"{PACKAGE}.{role}").main()


#: The ``python -c`` script that starts a subprocess: this file, run by path
#: (it imports only the standard library), calls :func:`run_role` with the
#: script's one argument.
LOADER = "import runpy, sys; sys.exit(runpy.run_path({path!r})['run_role'](sys.argv[1], {directory!r}))"


class BenchError(RuntimeError):
    pass


def serve(handler, stdin=None, stdout=None):
    """Answer requests until ``{"op": "quit"}`` or the end of input: request
    ``op`` is ``handler.cmd_<op>(request)``, its result or error one reply."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    for line in stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        op = req.get("op")
        if op == "quit":
            break
        try:
            reply = {"ok": True, "result": getattr(handler, "cmd_" + op)(req)}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        stdout.write(REPLY_PREFIX + json.dumps(reply) + "\n")
        stdout.flush()


class Session:
    """A worker or sender subprocess (``role``) that answers one JSON request per line."""

    def __init__(self, python, role, env, cwd, log_path):
        here = os.path.abspath(__file__)
        code = LOADER.format(path=here, directory=os.path.dirname(here))
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [python, "-c", code, role],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=cwd,
        )
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.dead = False

    def log_tail(self, lines=15):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _readline(self, deadline):
        """The next line of output (bytes), b"" at the end, None on timeout."""
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with selectors.DefaultSelector() as sel:
                sel.register(self.fd, selectors.EVENT_READ)
                if not sel.select(remaining):
                    return None
            data = os.read(self.fd, 65536)
            if not data:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def request(self, req, timeout=120):
        if self.dead:
            raise BenchError("the worker has exited")
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            self.kill()
            raise BenchError(f"the worker has exited: {self.log_tail()}") from None
        deadline = time.monotonic() + timeout
        prefix = REPLY_PREFIX.encode()
        while True:
            line = self._readline(deadline)
            if line is None:
                self.kill()
                raise BenchError(f"no reply to {req['op']!r} within {timeout:.0f} s: {self.log_tail()}")
            if not line:
                self.kill()
                raise BenchError(f"the worker exited with status {self.proc.returncode}: {self.log_tail()}")
            if line.startswith(prefix):
                reply = json.loads(line[len(prefix):])
                if not reply["ok"]:
                    raise BenchError(reply["error"])
                return reply["result"]

    def close(self):
        if not self.dead and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.flush()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()
        self.log.close()

    def kill(self):
        self.dead = True
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
