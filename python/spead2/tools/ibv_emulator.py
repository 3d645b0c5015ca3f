"""The emulated RDMA NIC: a **test device**, not a driver.

``libspead2_ibv_emulator.so`` stands in for libibverbs, librdmacm and libmlx5
when ``SPEAD2_IBV_LIBRARY_OVERRIDE`` names it, so spead2's ibverbs receive
path (MPRQ and plain readers, flow steering, completions, error recovery) and
its send path (UdpIbvStream) run unchanged on any Linux machine, without a NIC
or kernel RDMA support. Frames come from a UDP socket or a pcap file
(``SPEAD2_EMU_WIRE``); sent frames go to one (``SPEAD2_EMU_SEND_WIRE``); see the
emulator's README (``README.md`` next to the sources) for every option.

It proves the code paths, not performance: nothing here says how a real
ConnectX NIC behaves at line rate.

Wheels built with the rdma-core headers ship the library in
``spead2/_ibv_emulator/`` together with its sources. From the command line::

    python -m spead2.tools.ibv_emulator path          # the library (built if needed)
    python -m spead2.tools.ibv_emulator build DIR     # compile the bundled sources into DIR
    python -m spead2.tools.ibv_emulator env --wire udp:127.0.0.1:9000
                                                      # shell exports to use it

and from Python::

    from spead2.tools import ibv_emulator
    env = ibv_emulator.environment(wire="udp:127.0.0.1:9000")   # for a subprocess
"""

import argparse
import hashlib
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

LIBRARY_NAME = "libspead2_ibv_emulator.so"
#: The files the library is built from.
SOURCES = ("emulator.cpp", "spead2_emu.h", "exports.map")
#: Where a wheel puts the library and its sources.
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent / "_ibv_emulator"


class BuildError(RuntimeError):
    """Compiling the emulator failed (message says why and what to install)."""


def packaged_library():
    """The library shipped in the package, or ``None``."""
    lib = PACKAGE_DIR / LIBRARY_NAME
    return lib if lib.is_file() else None


def source_dir():
    """The emulator's sources: bundled with the package, else ``tests/ibv_emulator``
    of the source tree this module runs from; ``None`` if neither exists."""
    bundled = PACKAGE_DIR / "src"
    if all((bundled / f).is_file() for f in SOURCES):
        return bundled
    for parent in pathlib.Path(__file__).resolve().parents:
        candidate = parent / "tests" / "ibv_emulator"
        if all((candidate / f).is_file() for f in SOURCES):
            return candidate
    return None


def _compiler():
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def build(outdir, sanitize=False, source=None):
    """Compile the emulator into ``outdir``; returns the library's path.

    Needs a C++17 compiler and the rdma-core headers (``libibverbs-dev``,
    ``librdmacm-dev``); it links none of the RDMA libraries. Skips the work
    when the library is newer than its sources. ``sanitize`` builds with
    AddressSanitizer and UndefinedBehaviorSanitizer (such a library only loads
    into an instrumented process).
    """
    source = pathlib.Path(source) if source else source_dir()
    if source is None:
        raise BuildError("the emulator's sources are not available: this spead2 was installed without them "
                         "(a wheel built without the rdma-core headers) and is not running from a source tree")
    out = pathlib.Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    lib = out / LIBRARY_NAME
    newest = max((source / f).stat().st_mtime for f in SOURCES)
    if lib.is_file() and lib.stat().st_mtime >= newest:
        return lib
    cxx = _compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found (install g++, or set CXX)")
    cmd = [cxx, "-std=c++17", "-O2", "-g", "-Wall", "-Wextra", "-pthread", "-shared", "-fPIC",
           "-fvisibility=hidden", f"-Wl,--version-script={source / 'exports.map'}", "-Wl,-Bsymbolic",
           "-Wl,--no-undefined"]
    if sanitize:
        cmd += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    tmp = out / (LIBRARY_NAME + f".tmp{os.getpid()}")
    cmd += ["-o", str(tmp), str(source / "emulator.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        text = (proc.stderr or proc.stdout).strip().splitlines()
        hint = ""
        if any("infiniband/" in line or "rdma/" in line for line in text):
            hint = " (the rdma-core headers are missing: apt install libibverbs-dev librdmacm-dev)"
        raise BuildError(f"compiling the emulator failed{hint}:\n" + "\n".join(text[-20:]))
    os.replace(tmp, lib)
    return lib


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "spead2"


def library(build_if_needed=True):
    """The emulator library: the packaged one, else one built from the sources
    into ``~/.cache/spead2`` (one directory per source location). ``None`` if
    there is neither and ``build_if_needed`` is false; :exc:`BuildError` if the
    build fails."""
    lib = packaged_library()
    if lib is not None:
        return lib
    source = source_dir()
    if source is None or not build_if_needed:
        return None
    tag = hashlib.sha1(str(source).encode()).hexdigest()[:12]
    return build(cache_dir() / f"ibv_emulator-{tag}", source=source)


def environment(lib=None, interface="127.0.0.1", wire=None, base=None, **options):
    """Environment variables that make spead2 use the emulated device.

    ``options`` become ``SPEAD2_EMU_<NAME>`` (``no_mprq=1`` sets
    ``SPEAD2_EMU_NO_MPRQ=1``). The libraries are loaded once per process, so
    use the result for a subprocess (or set it before the first ibverbs call).
    ``base`` is the environment to extend (default: a copy of ``os.environ``).
    """
    env = dict(os.environ if base is None else base)
    env["SPEAD2_IBV_LIBRARY_OVERRIDE"] = str(lib if lib is not None else library())
    env["SPEAD2_EMU_INTERFACE"] = interface
    if wire is not None:
        env["SPEAD2_EMU_WIRE"] = wire
    for key, value in options.items():
        env["SPEAD2_EMU_" + key.upper()] = str(value)
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m spead2.tools.ibv_emulator",
        description="The emulated RDMA NIC (a TEST DEVICE) that runs spead2's ibverbs path without hardware.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("path", help="print the library's path (building it from the sources if needed)")
    b = sub.add_parser("build", help="compile the bundled sources into DIR")
    b.add_argument("dir", metavar="DIR")
    b.add_argument("--sanitize", action="store_true", help="AddressSanitizer + UBSan build")
    e = sub.add_parser("env", help="print shell exports that make spead2 use the emulated device")
    e.add_argument("--interface", default="127.0.0.1", help="IPv4 address the device owns [%(default)s]")
    e.add_argument("--wire", default=None, help="udp:ADDR:PORT or pcap:FILE (SPEAD2_EMU_WIRE)")
    e.add_argument("--send-wire", default=None,
                   help="where sent frames go: udp:ADDR:PORT or pcap:FILE (SPEAD2_EMU_SEND_WIRE)")
    sub.add_parser("sources", help="print the directory of the emulator's sources")
    args = parser.parse_args(argv)
    try:
        if args.command == "path":
            lib = library()
            if lib is None:
                print("ibv_emulator: neither the library nor its sources are installed", file=sys.stderr)
                return 1
            print(lib)
        elif args.command == "build":
            print(build(args.dir, sanitize=args.sanitize))
        elif args.command == "sources":
            src = source_dir()
            if src is None:
                print("ibv_emulator: the sources are not installed", file=sys.stderr)
                return 1
            print(src)
        else:
            extra = {"send_wire": args.send_wire} if args.send_wire else {}
            env = environment(interface=args.interface, wire=args.wire, base={}, **extra)
            print("# spead2's ibverbs calls go to the emulated TEST DEVICE, not a NIC")
            for key, value in env.items():
                print(f"export {key}={shlex.quote(value)}")
    except BuildError as exc:
        print(f"ibv_emulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
