"""bench/bench_udp.py runs end to end and reports what it claims to.

The benchmark compares two interpreters; here both are this one (the
reference is not needed to check the script's logic), with tiny loads.  No
timing is asserted: only the structure of the report and facts that do not
depend on the machine's speed.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench" / "bench_udp.py"

pytestmark = pytest.mark.skipif(
    os.environ.get("SPEAD2_EXPECT_ASAN") == "1",
    reason="the benchmark's workers import the installed package, not the sanitizer build")


def run_bench(*args, timeout=240):
    return subprocess.run([sys.executable, str(BENCH), "--ref-python", sys.executable, *args],
                          capture_output=True, text=True, timeout=timeout)


def test_ladder_report(tmp_path):
    out = tmp_path / "udp.json"
    proc = run_bench("--payloads", "8k", "--rates", "40,80", "--repeats", "2", "--rounds", "1",
                     "--step-seconds", "0.1", "--cpu-seconds", "0.1", "--json", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    p = report["payloads"]["8192"]
    for name in ("ours", "ref"):
        search = p["search"][name]
        assert [r["rate"] for r in search["rungs"]] == [40e6, 80e6]
        for rung in search["rungs"]:
            assert len(rung["runs"]) == 2
            assert 0 <= rung["lossless_runs"] <= 2
            assert rung["lost_heaps"] == sum(rung["sent_heaps"] - min(rung["sent_heaps"], r["heaps"])
                                             for r in rung["runs"])
            for r in rung["runs"]:
                assert r["packets"] > 0 and r["heaps"] <= r["sent_heaps"]
        # The summary rates are rungs (or 0 when the lowest rung already lost).
        assert search["lossless_rate"] in (0.0, 40e6, 80e6)
        assert search["mostly_lossless_rate"] >= search["lossless_rate"]
        assert search["unthrottled"]["offered_rate"] > 0
        assert len(p["cpu"][name]) == 1 and p["cpu"][name][0]["cpu_per_packet"] > 0
    # (a) ran at half the lower lossless rate (or half the lowest rung).
    lower = min(p["search"][n]["lossless_rate"] or 40e6 for n in ("ours", "ref"))
    assert p["cpu_rate"] == pytest.approx(lower / 2)
    assert report["machine"]["wakeups"]["sleeps"] > 0
    assert "rate_ratio" in report["summary"]["8192"]
    assert "(b) lossless runs per rung" in proc.stdout
    assert "highest rung below the first that failed" in proc.stdout


def test_forced_buffer(tmp_path):
    """--force-buffer hands both receivers one socket with an 8 MiB SO_RCVBUFFORCE buffer."""
    if os.geteuid() != 0:
        pytest.skip("SO_RCVBUFFORCE needs CAP_NET_ADMIN")
    out = tmp_path / "udp.json"
    proc = run_bench("--payloads", "1k", "--rates", "40", "--repeats", "1", "--rounds", "1",
                     "--step-seconds", "0.1", "--cpu-seconds", "0.1", "--force-buffer",
                     "--json", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["machine"]["force_buffer"] == 8 * 1024 * 1024
    assert "socket buffers forced to 8388608" in proc.stdout
    for name in ("ours", "ref"):
        run = report["payloads"]["1024"]["search"][name]["rungs"][0]["runs"][0]
        assert run["packets"] > 0
        # Linux reports twice the size set; clipped to rmem_max it would be less.
        assert run["socket_buffer"] >= 2 * 8 * 1024 * 1024


@pytest.mark.parametrize("args", [
    ["--repeats", "0"],
    ["--repeats", "11"],
    ["--step-seconds", "10"],
    ["--payloads", "3k"],
    ["--rates", ",".join(["100"] * 13)],
])
def test_unbounded_or_bad_options_rejected(args):
    proc = run_bench(*args, timeout=60)
    assert proc.returncode == 2
    assert "error:" in proc.stderr
