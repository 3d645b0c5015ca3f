"""The sender's pacing arithmetic (src/send/pacer.h) against a fake clock:
builds tests/cpp/test_send_pacer.cpp with the system C++ compiler and runs it.
Real pacing accuracy is measured by bench/bench_send.py --rate (no timing
assertions here)."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_pacer_fake_clock(tmp_path):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "test_send_pacer"
    subprocess.run([cxx, "-std=c++17", "-O1", "-I", str(ROOT / "src"), str(ROOT / "tests" / "cpp" / "test_send_pacer.cpp"),
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_send_pacer: all checks passed" in proc.stdout
