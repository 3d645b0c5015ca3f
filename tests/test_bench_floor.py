"""bench/bench_floor.py builds its C floors and reports them.

Tiny traffic, one round.  No speed is asserted: the bare receiver's
placement is checked byte by byte inside floor.c (it exits non-zero on a
wrong byte), and the report must hold every row.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench" / "bench_floor.py"

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None and shutil.which("gcc") is None,
                                reason="needs a C compiler")


def test_floor_report(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--rounds", "1", "--scale", "0.01",
                           "--tmpdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert {(r[0], r[1]) for r in rows} == {(s, w) for s in ("1k", "64k", "8k")
                                            for w in ("copy", "place", "populate", "read")}
    for r in rows:
        assert float(r[2]) > 0
        if r[1] == "copy":
            assert float(r[-2]) == 1.0   # the copy is its own reference
    assert list(tmp_path.iterdir()) == []   # traffic and binary removed


def test_floor_place_detects_misplacement(tmp_path):
    # The check inside floor.c fails on traffic whose payload bytes are not
    # the pattern it expects: proof that it looks at the bytes.
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_chunk
        import bench_floor
    finally:
        sys.path.pop(0)
    exe = bench_floor.build(str(tmp_path))
    p = bench_chunk.scenario_params("1k", 0.001)
    raw = tmp_path / "1k.spead"
    bench_chunk.generate_traffic(p, str(raw), None)
    chunk_bytes = p["heaps_per_chunk"] * p["heap_size"]
    ok = subprocess.run([exe, "place", str(raw), str(chunk_bytes), "8", str(p["heap_size"])],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    data = bytearray(raw.read_bytes())
    data[-1] ^= 0xFF   # last payload byte of the last heap
    raw.write_bytes(bytes(data))
    bad = subprocess.run([exe, "place", str(raw), str(chunk_bytes), "8", str(p["heap_size"])],
                         capture_output=True, text=True)
    assert bad.returncode == 3 and "expected" in bad.stderr


BARE = BENCH.parent / "bench_bare.py"


def test_bare_report(tmp_path):
    """bench_bare.py runs the receiver and floor.c's loop side by side and
    reports their ratio for each scenario and source (no speed asserted).
    Each side checks its own result: the receiver every heap complete, the
    loop every packet placed."""
    pytest.importorskip("numba")
    pytest.importorskip("scipy")
    proc = subprocess.run([sys.executable, str(BARE), "--rounds", "1", "--reps", "1", "--scale", "0.01",
                           "--sources", "mem,pcap", "--tmpdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert [tuple(r[:3]) for r in rows] == [(s, src, "this") for s in ("1k", "64k", "8k") for src in ("mem", "pcap")]
    for r in rows:
        recv, bare, ratio = float(r[3]), float(r[4]), float(r[5])
        assert recv > 0 and bare > 0
        assert abs(ratio - recv / bare) < 0.01 + 0.01 * ratio   # one pair: the median ratio is its ratio
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("source", ["mem", "pcap"])
def test_floor_library_places_like_the_program(tmp_path, source):
    """floor_place (packets in memory) and floor_place_pcap (bench_chunk's
    pcap file), as bench_bare.py loads them, write each heap to slot
    cnt % (ring heaps) of the chunks they are given, like the floor program."""
    import ctypes

    import numpy as np
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_chunk
        import bench_floor
    finally:
        sys.path.pop(0)
    lib = ctypes.CDLL(bench_floor.build(str(tmp_path), library=True))
    lib.floor_place.restype = ctypes.c_size_t
    lib.floor_place_pcap.restype = ctypes.c_size_t
    p = bench_chunk.scenario_params("64k", 0.01)
    raw, pcap = tmp_path / "64k.spead", tmp_path / "64k.pcap"
    bench_chunk.generate_traffic(p, str(raw), str(pcap))
    hpc, heap_size = p["heaps_per_chunk"], p["heap_size"]
    chunks = [np.zeros(hpc * heap_size, np.uint8) for _ in range(3)]
    ptrs = (ctypes.c_void_p * 3)(*[c.ctypes.data for c in chunks])
    sizes = (ctypes.c_size_t(3), ctypes.c_size_t(hpc * heap_size), ctypes.c_size_t(heap_size))
    if source == "mem":
        data = raw.read_bytes()
        n = lib.floor_place(data, ctypes.c_size_t(len(data)), ptrs, *sizes)
    else:
        n = lib.floor_place_pcap(str(pcap).encode(), ptrs, *sizes)
    assert n == p["n_packets"]
    ring = 3 * hpc
    last = p["n_heaps"]   # heaps are numbered 1..n_heaps
    for cnt in range(max(1, last - ring + 1), last + 1):
        slot = cnt % ring
        heap = chunks[slot // hpc][(slot % hpc) * heap_size:(slot % hpc + 1) * heap_size]
        assert np.all(heap == bench_chunk.expected_byte(cnt)), cnt
