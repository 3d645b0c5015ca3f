"""Plumbing of the spead2_bench tool (spead2.tools.bench).

Tiny ``--quick`` runs through the real transports check the command line,
the JSON report and the plot.  Nothing here depends on how fast anything is.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from spead2.tools import bench

try:
    import matplotlib  # noqa: F401

    HAVE_MATPLOTLIB = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_MATPLOTLIB = False

try:
    import numba  # noqa: F401
    import scipy  # noqa: F401

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_NUMBA = False

needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="the benchmark's place callback needs numba and scipy")

EMULATOR_SOURCE = pathlib.Path(__file__).parent / "ibv_emulator"
NUMBERS = (int, float)


def run_tool(*args, env=None, timeout=110):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "spead2.tools.bench", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=full_env, stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run of every transport, with --json and (if possible) --plot."""
    if not HAVE_NUMBA:
        pytest.skip("the benchmark's place callback needs numba and scipy")
    tmp = tmp_path_factory.mktemp("bench")
    json_path = tmp / "report.json"
    png_path = tmp / "plot.png"
    args = ["--quick", "--transports", "buffer,pcap,udp,ibverbs", "--json", json_path, "--tmpdir", tmp]
    if EMULATOR_SOURCE.joinpath("build.sh").exists():
        args += ["--ibv-emulator", EMULATOR_SOURCE]
    if HAVE_MATPLOTLIB:
        args += ["--plot", png_path]
    proc = run_tool(*args)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(json_path.read_text())
    return proc, report, png_path


def check_measurement(m, transport, traffic):
    assert isinstance(m["available"], bool)
    if not m["available"]:
        assert isinstance(m["reason"], str) and m["reason"]
        assert not m["reason"].startswith("failed"), m["reason"]
        return
    for key in ("seconds", "packets_per_s", "payload_gbps"):
        assert isinstance(m[key], NUMBERS) and m[key] > 0, (key, m[key])
    for key in ("cpu_seconds", "cpu_s_per_mpkt"):
        assert isinstance(m[key], NUMBERS) and m[key] >= 0, (key, m[key])
    for key in ("packets_sent", "packets_received", "heaps_sent", "heaps_complete", "heaps_lost",
                "payload_errors", "chunks"):
        assert isinstance(m[key], int) and m[key] >= 0, (key, m[key])
    assert m["heaps_complete"] + m["heaps_lost"] == m["heaps_sent"]
    assert m["heaps_complete"] <= m["heaps_sent"]
    assert m["payload_errors"] == 0
    assert isinstance(m["stats"], dict) and "packets" in m["stats"]
    if transport in ("buffer", "pcap"):
        assert m["heaps_sent"] == traffic["heaps"]
        assert m["heaps_complete"] == m["heaps_sent"]
        assert m["packets_received"] == traffic["packets"]
    else:
        assert m["heaps_sent"] <= traffic["heaps"]
        lossless = m["lossless"]
        assert isinstance(lossless["packets_per_s"], NUMBERS) and lossless["packets_per_s"] >= 0
        assert isinstance(lossless["payload_gbps"], NUMBERS) and lossless["payload_gbps"] >= 0
        assert isinstance(lossless["sender_limited"], bool)
        assert isinstance(lossless["steps"], list)
        assert len(lossless["steps"]) <= 3  # --quick bounds the search
        for step in lossless["steps"]:
            assert step["rate_pps"] > 0 and isinstance(step["lossless"], bool)


def test_report_schema(quick_run):
    proc, report, _ = quick_run
    assert report["tool"] == "spead2_bench"
    assert report["schema"] == bench.SCHEMA_VERSION
    assert report["reference"] is None
    machine = report["machine"]
    assert machine["cpus"] >= 1 and isinstance(machine["virtual"], bool)
    assert "core" in machine["description"]
    assert report["spead2"]["version"]
    config = report["config"]
    assert config["quick"] is True
    assert config["transports"] == ["buffer", "pcap", "udp", "ibverbs"]
    assert config["packet_sizes"] == [1472]
    rows = report["results"]
    assert [r["transport"] for r in rows] == ["buffer", "pcap", "udp", "ibverbs"]
    for row in rows:
        traffic = row["traffic"]
        assert row["packet_size"] == traffic["packet_size"] == 1472
        assert traffic["heaps"] == config["heaps"]
        assert traffic["packets"] == traffic["heaps"] * traffic["packets_per_heap"]
        assert isinstance(row["label"], str) and row["label"]
        assert row["live"] is (row["transport"] in ("udp", "ibverbs"))
        assert "ratio" not in row and "reference" not in row
        check_measurement(row["ours"], row["transport"], traffic)
    by_name = {r["transport"]: r for r in rows}
    for name in ("buffer", "pcap"):
        assert by_name[name]["ours"]["available"], by_name[name]["ours"]
    # Without --ibv-interface the ibverbs row is always the emulated device.
    assert by_name["ibverbs"]["label"] == "ibverbs (emulated)"


def test_table_and_quiet_progress(quick_run):
    proc, report, _ = quick_run
    for label in ("buffer (memory)", "pcap replay", "kernel UDP (loopback)", "ibverbs (emulated)"):
        assert label in proc.stdout
    assert "heaps ok/sent" in proc.stdout
    # Not a terminal: no progress line.
    assert "\r" not in proc.stderr


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="--plot needs matplotlib")
def test_plot_written(quick_run):
    _, _, png = quick_run
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 1000


@needs_numba
def test_compare_reference_plumbing(tmp_path):
    """Ratio columns, with our own interpreter standing in for the reference
    (so that no virtualenv has to be made): only the plumbing is checked."""
    json_path = tmp_path / "cmp.json"
    proc = run_tool("--quick", "--transports", "buffer,ibverbs", "--compare-reference",
                    "--ref-python", sys.executable, "--json", json_path, "--tmpdir", tmp_path,
                    "--ibv-emulator", tmp_path / "no-such-library.so",
                    env={"SPEAD2_BENCH_ALLOW_ANY_REFERENCE": "1"})
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(json_path.read_text())
    assert report["reference"]["version"]
    assert report["config"]["compare_reference"] is True
    buffer_row, ibv_row = report["results"]
    check_measurement(buffer_row["reference"], "buffer", buffer_row["traffic"])
    for key in ("packets_per_s", "payload_gbps", "cpu_s_per_mpkt"):
        assert buffer_row["ratio"][key] > 0
    # Neither side can run the emulated device here: n/a with reasons, no ratios.
    assert not ibv_row["ours"]["available"]
    assert "does not exist" in ibv_row["ours"]["reason"] or "no add_udp_ibv_reader" in ibv_row["ours"]["reason"]
    assert not ibv_row["reference"]["available"]
    assert ibv_row["ratio"] is None
    assert "ref Mpkt/s" in proc.stdout and "n/a" in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--packet-size", "10"],
        ["--packet-size", "70000"],
        ["--packet-size", "1472,abc"],
        ["--heap-size", "0"],
        ["--heaps", "-3"],
        ["--transports", "buffer,carrier-pigeon"],
        ["--flavour", "64-12"],
        ["--flavour", "SPEAD-32-16"],
        ["--rate-search", "maybe"],
        ["--rate-tolerance", "2"],
        ["--step-time", "0"],
        ["--ibv-endpoint", "239.1.2.3:7148"],  # needs --ibv-interface
        ["--plot", "out.svg"],
        ["--no-such-option"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_bad_arguments_exit_2_from_command_line():
    proc = run_tool("--transports", "nonsense", timeout=60)
    assert proc.returncode == 2
    assert "unknown transport" in proc.stderr


def test_traffic_files(tmp_path):
    """The generated files agree with each other and with the description."""
    import numpy as np

    traffic = bench.Traffic(heap_size=3000, packet_size=1000, heaps=10, addr_bits=40, channels=4)
    traffic.check()
    assert traffic.heaps == 12  # whole timestamps
    assert traffic.packets_per_heap == 4  # 936 + 936 + 936 + 192 bytes of payload
    paths = bench.generate(traffic, str(tmp_path))
    lengths = np.load(paths["lengths"])
    assert len(lengths) == traffic.n_packets
    raw = pathlib.Path(paths["raw"]).read_bytes()
    assert len(raw) == int(lengths.sum()) == traffic.spead_bytes
    pcap = pathlib.Path(paths["pcap"]).read_bytes()
    assert len(pcap) == 24 + int((lengths + 16 + bench.FRAME_OVERHEAD).sum())
    # First packet: SPEAD-64-40 header, then HEAP_CNT = 1.
    assert raw[:4] == bytes([0x53, 4, 3, 5])
    assert int.from_bytes(raw[8:16], "big") == (1 << 63) | (bench.HEAP_CNT_ID << 40) | 1
    # The payload of heap i is fill_byte(i).
    assert raw[bench.SPEAD_OVERHEAD] == bench.fill_byte(0)
    # Reused when asked again.
    mtime = os.path.getmtime(paths["raw"])
    assert bench.generate(traffic, str(tmp_path)) == paths
    assert os.path.getmtime(paths["raw"]) == mtime


def test_format_table_marks_unavailable():
    report = {
        "reference": None,
        "machine": {"description": "2-core virtual machine"},
        "config": {"heap_size": 1024, "flavour": "SPEAD-64-48", "heaps": 4},
        "results": [
            {"label": "ibverbs (emulated)", "packet_size": 1472,
             "ours": {"available": False, "reason": "the emulator is not built"}},
        ],
    }
    text = bench.format_table(report)
    assert "n/a" in text and "the emulator is not built" in text
