"""Helpers shared by the tests that run against the emulated RDMA NIC
(tests/ibv_emulator): building it, the environment that loads it, its
counters, and the frames of the pcap files it reads and writes.  The
session-wide ``emulator`` fixture (conftest.py) calls :func:`build_emulator`.
"""

import json
import os
import pathlib
import struct
import subprocess
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
EMU_DIR = ROOT / "tests" / "ibv_emulator"


def build_emulator():
    """Path of the emulator library, built when missing or older than its sources (cached under build/)."""
    out = ROOT / "build" / "ibv-emulator"
    lib = out / "libspead2_ibv_emulator.so"
    sources = list(EMU_DIR.glob("*.cpp")) + list(EMU_DIR.glob("*.h"))
    if not lib.exists() or any(s.stat().st_mtime > lib.stat().st_mtime for s in sources):
        result = subprocess.run(["bash", str(EMU_DIR / "build.sh"), str(out)], capture_output=True, text=True)
        assert result.returncode == 0, f"building the emulator failed:\n{result.stdout}\n{result.stderr}"
    assert lib.exists()
    return lib


def emu_env(emulator, tmp_path, **extra):
    """The environment of a process that loads the emulator as its ibverbs
    library: no SPEAD2_EMU_* setting inherited, the device on 127.0.0.1, its
    counters in tmp_path/emu-stats.json, then `extra` (values made strings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAD2_EMU_")}
    env["SPEAD2_IBV_LIBRARY_OVERRIDE"] = str(emulator)
    env["SPEAD2_EMU_INTERFACE"] = "127.0.0.1"
    env["SPEAD2_EMU_STATS"] = str(tmp_path / "emu-stats.json")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def emu_stats(tmp_path, missing_ok=True):
    """The emulator's counters ({} while the file is missing or being written, if `missing_ok`)."""
    try:
        return json.loads((tmp_path / "emu-stats.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        if missing_ok:
            return {}
        raise


def pcap_frames(path, strict=False):
    """The frames of a little-endian classic pcap (µs or ns), as PcapFileStream
    and the emulator write them; `strict` also checks the magic and that the
    records fill the file exactly."""
    data = pathlib.Path(path).read_bytes()
    if strict:
        assert struct.unpack_from("<I", data, 0)[0] in (0xA1B2C3D4, 0xA1B23C4D)
    frames = []
    pos = 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        frames.append(data[pos + 16:pos + 16 + caplen])
        pos += 16 + caplen
    if strict:
        assert pos == len(data)
    return frames


#: Source of two functions for worker scripts: ``drop_caps(caps)`` removes the
#: given capabilities (numbers) from the effective and permitted sets and
#: returns False if the process's capabilities cannot be read;
#: ``run_unprivileged(limit)`` runs the rest of the script as an unprivileged
#: user would: RLIMIT_MEMLOCK set to ``limit`` and CAP_IPC_LOCK dropped (if
#: the process has capabilities to drop).
UNPRIVILEGED_MEMLOCK = textwrap.dedent(
    """
    def drop_caps(caps):
        import ctypes
        class CapHeader(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class CapData(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]
        libc = ctypes.CDLL(None, use_errno=True)
        header, data = CapHeader(0x20080522, 0), (CapData * 2)()
        if libc.capget(ctypes.byref(header), data) != 0:
            return False
        for cap in caps:
            data[cap // 32].effective &= ~(1 << (cap % 32))
            data[cap // 32].permitted &= ~(1 << (cap % 32))
        assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
        return True

    def run_unprivileged(limit):
        import resource
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
        CAP_IPC_LOCK = 14
        drop_caps([CAP_IPC_LOCK])
    """
)
