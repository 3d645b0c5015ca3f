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
from spead2.tools.bench import cli as bench_cli
from spead2.tools.bench import report as bench_report
from spead2.tools.bench import run as bench_run
from spead2.tools.bench import sender as bench_sender
from spead2.tools.bench import traffic as bench_traffic

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
    assert report["schema"] == bench_run.SCHEMA_VERSION
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

    traffic = bench_traffic.Traffic(heap_size=3000, packet_size=1000, heaps=10, addr_bits=40, channels=4)
    traffic.check()
    assert traffic.heaps == 12  # whole timestamps
    assert traffic.packets_per_heap == 4  # 936 + 936 + 936 + 192 bytes of payload
    paths = bench_traffic.generate(traffic, str(tmp_path))
    lengths = np.load(paths["lengths"])
    assert len(lengths) == traffic.n_packets
    raw = pathlib.Path(paths["raw"]).read_bytes()
    assert len(raw) == int(lengths.sum()) == traffic.spead_bytes
    pcap = pathlib.Path(paths["pcap"]).read_bytes()
    assert len(pcap) == 24 + int((lengths + 16 + bench_traffic.FRAME_OVERHEAD).sum())
    # First packet: SPEAD-64-40 header, then HEAP_CNT = 1.
    assert raw[:4] == bytes([0x53, 4, 3, 5])
    assert int.from_bytes(raw[8:16], "big") == (1 << 63) | (bench_traffic.HEAP_CNT_ID << 40) | 1
    # The payload of heap i is fill_byte(i).
    assert raw[bench_traffic.SPEAD_OVERHEAD] == bench_traffic.fill_byte(0)
    # Reused when asked again.
    mtime = os.path.getmtime(paths["raw"])
    assert bench_traffic.generate(traffic, str(tmp_path)) == paths
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
    text = bench_report.format_table(report)
    assert "n/a" in text and "the emulator is not built" in text


# ----------------------------------------------------------- --streams (groups)


@pytest.fixture(scope="module")
def groups_run(tmp_path_factory):
    """One --quick run of every transport into a plain stream and groups of 1 and 2 members."""
    if not HAVE_NUMBA:
        pytest.skip("the benchmark's place callback needs numba and scipy")
    tmp = tmp_path_factory.mktemp("bench-groups")
    json_path = tmp / "report.json"
    args = ["--quick", "--transports", "buffer,pcap,udp,ibverbs", "--streams", "plain,1,2",
            "--json", json_path, "--tmpdir", tmp]
    if EMULATOR_SOURCE.joinpath("build.sh").exists():
        args += ["--ibv-emulator", EMULATOR_SOURCE]
    proc = run_tool(*args)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(json_path.read_text())


def check_group(m, transport, streams):
    """The group-specific part of a measurement (after check_measurement)."""
    assert m["streams"] == streams
    assert len(m["cores"]) == (streams or 1)
    for key in ("receiver_cpu_seconds", "receiver_cpu_s_per_mpkt"):
        assert m[key] is None or (isinstance(m[key], NUMBERS) and m[key] >= 0), (key, m[key])
    if streams is None:
        assert "members" not in m
        return
    members = m["members"]
    assert len(members) == streams
    for member in members:
        for key in ("packets", "heaps_sent", "heaps_complete", "heaps_lost"):
            assert isinstance(member[key], int) and member[key] >= 0, (key, member[key])
        assert member["heaps_complete"] + member["heaps_lost"] == member["heaps_sent"]
        assert member["cpu_seconds"] is None or member["cpu_seconds"] >= 0
        switches = member["context_switches"]
        assert switches is None or (len(switches) == 2 and min(switches) >= 0)
        assert isinstance(member["stats"], dict) and "packets" in member["stats"]
    # Heap i is for member i mod N: the shares differ by at most one heap.
    sent = [member["heaps_sent"] for member in members]
    assert sum(sent) == m["heaps_sent"] and max(sent) - min(sent) <= 1
    assert sum(member["heaps_complete"] for member in members) == m["heaps_complete"]
    if transport in ("buffer", "pcap"):
        # LOSSLESS (the default): nothing lost, every member got its share.
        assert m["heaps_lost"] == 0
        assert all(member["heaps_lost"] == 0 for member in members)
        assert sum(member["packets"] for member in members) == m["packets_received"]
        assert all(member["packets"] > 0 for member in members)
    else:
        assert all(member["packets_sent"] > 0 for member in members)


@needs_numba
def test_groups_report(groups_run):
    proc, report = groups_run
    config = report["config"]
    assert config["streams"] == [None, 1, 2]
    assert config["eviction_mode"] == "lossless"
    assert config["rounds"] == 1 and config["pin"] is True
    rows = report["results"]
    assert [(r["transport"], r["streams"]) for r in rows] == [
        (t, s) for t in ("buffer", "pcap", "udp", "ibverbs") for s in (None, 1, 2)]
    for row in rows:
        m = row["ours"]
        check_measurement(m, row["transport"], row["traffic"])
        if m["available"]:
            check_group(m, row["transport"], row["streams"])
    by_key = {(r["transport"], r["streams"]): r["ours"] for r in rows}
    for transport in ("buffer", "pcap"):
        for streams in (None, 1, 2):
            assert by_key[transport, streams]["available"], by_key[transport, streams]
    # The group overhead: every group against the plain stream, per transport.
    overhead = report["group_overhead"]
    available = {t for t in ("buffer", "pcap", "udp", "ibverbs")
                 if all(by_key[t, s]["available"] for s in (None, 1, 2))}
    assert {(e["transport"], e["streams"]) for e in overhead} == {(t, s) for t in available for s in (1, 2)}
    for e in overhead:
        assert e["impl"] == "ours" and e["rounds"] == 1
        for key in ("cpu_per_packet", "packets_per_s"):
            assert e[key]["min"] <= e[key]["median"] <= e[key]["max"]
            assert e[key]["min"] > 0


@needs_numba
def test_groups_table(groups_run):
    proc, _ = groups_run
    out = proc.stdout
    for text in ("streams", "member CPU ms", "rx CPU s/Mpkt", "ChunkStreamRingGroup", "group overhead"):
        assert text in out, text
    assert "plain" in out


@needs_numba
def test_groups_rounds_and_reference(tmp_path):
    """--rounds with the reference (our own interpreter standing in): per-round
    numbers, their spread and the spread of the ratios; LOSSY mode; no pinning."""
    json_path = tmp_path / "rounds.json"
    proc = run_tool("--quick", "--transports", "buffer", "--streams", "2", "--rounds", "2",
                    "--eviction-mode", "lossy", "--pin", "off", "--compare-reference",
                    "--ref-python", sys.executable, "--json", json_path, "--tmpdir", tmp_path,
                    env={"SPEAD2_BENCH_ALLOW_ANY_REFERENCE": "1"})
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(json_path.read_text())
    assert report["config"]["eviction_mode"] == "lossy"
    assert report["config"]["cpus"] == []
    assert report["group_overhead"] == []  # no plain stream to compare with
    (row,) = report["results"]
    assert row["streams"] == 2
    for impl in ("ours", "reference"):
        m = row[impl]
        assert m["available"], m
        # LOSSY: a member that reads its buffer ahead may make the other lose
        # chunks, so loss is allowed here; the accounting must still add up.
        assert m["heaps_complete"] + m["heaps_lost"] == m["heaps_sent"]
        assert m["cores"] == [None, None]
        assert len(m["members"]) == 2
        assert len(m["rounds"]) == 2 and m["round"] in (0, 1)
        for r in m["rounds"]:
            assert len(r["member_cpu_seconds"]) == 2
        spread = m["spread"]["packets_per_s"]
        assert spread["min"] <= m["packets_per_s"] <= spread["max"]
        assert m["heaps_lost_all_rounds"] == sum(r["heaps_lost"] for r in m["rounds"])
    ratio = row["ratio"]
    assert len(ratio["rounds"]) == 2
    s = ratio["spread"]["packets_per_s"]
    assert 0 < s["min"] <= ratio["packets_per_s"] <= s["max"]
    assert "2 rounds" in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--streams", "0"],
        ["--streams", "-2"],
        ["--streams", "two"],
        ["--streams", "1,0"],
        ["--streams", ","],
        ["--streams", str(bench_cli.MAX_STREAMS + 1)],
        ["--eviction-mode", "sometimes"],
        ["--rounds", "0"],
        ["--pin", "maybe"],
        ["--pin", "-1"],
        ["--pin", "0,4096"],  # not a CPU this process may use
    ],
)
def test_bad_group_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_streams_zero_from_command_line():
    proc = run_tool("--streams", "0", timeout=60)
    assert proc.returncode == 2
    assert "--streams" in proc.stderr and "1 to" in proc.stderr


def test_streams_parsing():
    assert bench_cli._streams("plain,1,2,4") == [None, 1, 2, 4]
    assert bench_cli._streams("2, 2,PLAIN") == [2, None]
    args = bench_cli.build_parser().parse_args([])
    bench_cli._finish_args(bench_cli.build_parser(), args)
    assert args.stream_list == [None]  # the plain ChunkRingStream by default


def test_pin_parsing():
    assert bench_cli._pin("on") is True and bench_cli._pin("off") is False
    assert bench_cli._pin("0") == [0] and bench_cli._pin("1,0") == [1, 0]
    cpu = min(os.sched_getaffinity(0))
    args = bench_cli.build_parser().parse_args(["--pin", str(cpu)])
    bench_cli._finish_args(bench_cli.build_parser(), args)
    assert args.pin == [cpu]


def test_member_share():
    for total in range(0, 13):
        for n in range(1, 5):
            shares = [bench_traffic.member_share(total, n, m) for m in range(n)]
            assert shares == [len(range(m, total, n)) for m in range(n)]


def test_split_pcap(tmp_path):
    """Each capture file holds the heaps i with i mod n = its number, in order."""
    import numpy as np

    traffic = bench_traffic.Traffic(heap_size=3000, packet_size=1000, heaps=12, channels=4)
    paths = bench_traffic.generate(traffic, str(tmp_path))
    parts = bench_traffic.split_pcap(traffic, paths["pcap"], 3)
    assert len(parts) == 3
    whole = pathlib.Path(paths["pcap"]).read_bytes()
    heaps = np.frombuffer(whole[24:], np.uint8).reshape(traffic.heaps, -1)
    for m, part in enumerate(parts):
        data = pathlib.Path(part).read_bytes()
        assert data[:24] == whole[:24]
        assert data[24:] == heaps[m::3].tobytes()


def test_sender_split(tmp_path):
    """The sender's traffic per destination: heap i for destination i mod n,
    and in frames mode the UDP destination port FRAME_DST_PORT + m."""
    import numpy as np

    traffic = bench_traffic.Traffic(heap_size=3000, packet_size=1000, heaps=8, channels=4)
    files = bench_traffic.generate(traffic, str(tmp_path))
    k = traffic.packets_per_heap
    sender = bench_sender.Sender()
    ((whole, lengths, _),) = sender._load(files, "udp")
    per_heap = np.frombuffer(whole, np.uint8).reshape(traffic.heaps, -1)
    parts = sender._load(files, "udp", 2, k)
    for m, (data, part_lengths, batches) in enumerate(parts):
        assert data == per_heap[m::2].tobytes()
        assert part_lengths == lengths[:len(part_lengths)] and len(part_lengths) == 4 * k
        assert sum(b[1] for b in batches) == len(data)
        assert sum(b[3] for b in batches) == len(part_lengths)
    frames = sender._load(files, "frames", 2, k)
    for m, (data, part_lengths, _) in enumerate(frames):
        pos = 0
        for length in part_lengths:
            frame = data[pos:pos + length]
            assert int.from_bytes(frame[36:38], "big") == bench_traffic.FRAME_DST_PORT + m
            pos += length
        assert pos == len(data)


def test_format_table_groups():
    member = {"cpu_seconds": 0.012, "heaps_lost": 0}
    common = {"available": True, "packets_per_s": 2e6, "payload_gbps": 20.0, "cpu_s_per_mpkt": 0.2,
              "receiver_cpu_s_per_mpkt": 0.15, "heaps_complete": 8, "heaps_sent": 8}
    report = {
        "reference": None,
        "machine": {"description": "2-core virtual machine"},
        "config": {"heap_size": 1024, "flavour": "SPEAD-64-48", "heaps": 8, "rounds": 3,
                   "eviction_mode": "lossless", "cpus": [0, 1]},
        "results": [
            {"label": "buffer (memory)", "packet_size": 1472, "streams": None, "ours": dict(common)},
            {"label": "buffer (memory)", "packet_size": 1472, "streams": 2,
             "ours": dict(common, members=[member, member])},
        ],
        "group_overhead": [
            {"label": "buffer (memory)", "packet_size": 1472, "impl": "ours", "streams": 2,
             "receiver_cpu_per_packet": {"min": 1.0, "median": 1.05, "max": 1.1},
             "cpu_per_packet": {"min": 1.0, "median": 1.04, "max": 1.2},
             "packets_per_s": None},
        ],
    }
    text = bench_report.format_table(report)
    assert "12/12" in text  # per-member CPU in ms
    assert "LOSSLESS" in text and "CPUs 0,1 in turn" in text
    assert "group overhead" in text and "1.05 (1.00-1.10)" in text
    assert "3 rounds" in text
