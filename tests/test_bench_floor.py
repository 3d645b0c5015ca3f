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
