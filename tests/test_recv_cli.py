"""The ``spead2_recv`` command (``spead2.tools.recv``).

* replaying the bundled captures with ``--place timestamp`` (layout taken
  from each capture's manifest) and ``--place cnt``: every heap present;
* text and ``--json`` output, ``--quiet``, several capture files;
* receiving over UDP on loopback from ``spead2_send`` (payloads verified);
* SIGINT while receiving: summary printed, exit status 0; ``--duration``;
* the progress line: on a terminal (a pty) only;
* bad arguments: a clear message and a non-zero exit status;
* ``--ibv`` on the emulated RDMA device (tests/ibv_emulator).

Runs that do not involve signals or terminals call ``main(argv)`` in this
process (faster); the others run ``python -m spead2.tools.recv``.
"""

import json
import os
import pathlib
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import spead2

import refvenv

pytest.importorskip("numba")
pytest.importorskip("scipy")

from spead2.tools import recv as recv_tool  # noqa: E402

#: Subprocesses compile numba callbacks; under the ASAN stage of scripts/test.sh
#: (and on a loaded 2-core machine) that is several times slower.
SLOW = 4 if os.environ.get("SPEAD2_EXPECT_ASAN") else 1

pytestmark = pytest.mark.timeout(120 * SLOW)

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "tests" / "data"
CAPTURES = sorted(p.name for p in DATA_DIR.iterdir() if p.suffix in (".pcap", ".pcapng"))
RECV = [sys.executable, "-m", "spead2.tools.recv"]


def manifest_for(capture):
    with open(DATA_DIR / (capture.rsplit(".", 1)[0] + ".json")) as f:
        return json.load(f)


def layout_args(manifest):
    """spead2_recv options for the layout a capture's manifest describes."""
    heaps = manifest["heaps"]
    timestamps = sorted({h["timestamp"] for h in heaps})
    channels = sorted({h["frequency"] for h in heaps})
    return [
        "--place", "timestamp",
        "--heap-size", str(manifest["heap_payload_bytes"]),
        "--channels", str(len(channels)),
        "--channel-step", str(channels[1] - channels[0]),
        "--timestamp-step", str(timestamps[1] - timestamps[0]),
    ]


def run_main(capsys, argv):
    """main(argv) in this process: (exit status, stdout, stderr)."""
    try:
        status = recv_tool.main(argv)
    except SystemExit as exc:  # argparse errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def json_lines(text):
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    chunks = [r for r in records if r["type"] == "chunk"]
    summaries = [r for r in records if r["type"] == "summary"]
    assert len(summaries) == 1 and records[-1] is summaries[0]
    return chunks, summaries[0]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(proc, pattern, timeout=30.0 * SLOW):
    """Read proc.stderr until a line matches; returns what was read.

    Reads the raw file descriptor: select() plus a buffered readline() would
    miss a line that arrived together with the previous one (it would sit in
    the text wrapper's buffer while select() waits for more).
    """
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    text = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
            for line in text.splitlines():
                if re.search(pattern, line):
                    return text
    raise AssertionError(f"no line matching {pattern!r} on stderr; got:\n{text}")


# ---------------------------------------------------------------------------
# Captures


@pytest.mark.parametrize("capture", CAPTURES)
def test_capture_every_heap_present(capsys, capture):
    manifest = manifest_for(capture)
    status, out, err = run_main(capsys, [str(DATA_DIR / capture), *layout_args(manifest), "--json"])
    assert status == 0, err
    chunks, summary = json_lines(out)
    heaps = manifest["heaps"]
    timestamps = sorted({h["timestamp"] for h in heaps})
    channels = len({h["frequency"] for h in heaps})
    step = timestamps[1] - timestamps[0]
    # One complete chunk per timestamp, in order.
    assert [c["first_timestamp"] for c in chunks] == timestamps
    assert [c["chunk_id"] for c in chunks] == [t // step for t in timestamps]
    for c in chunks:
        assert c["present"] == "1" * channels
        assert c["heaps"] == c["heaps_per_chunk"] == channels
        assert c["complete"] == 100.0
    assert summary["stopped_by"] == "end of stream"
    assert summary["chunks"] == summary["complete_chunks"] == len(timestamps)
    assert summary["heaps_placed"] == summary["heap_slots"] == len(heaps)
    assert summary["bytes_placed"] == len(heaps) * manifest["heap_payload_bytes"]
    stats = summary["stats"]
    # The descriptor heap and the stop heap are rejected; the first is
    # counted in "heaps", the second is not (as in the reference).
    assert stats["heaps"] == len(heaps) + 1
    assert stats["rejected_heaps"] == 2
    assert stats["incomplete_heaps_evicted"] == 0
    assert stats["malformed_packets"] == 0
    assert set(stats) >= {"heaps", "packets", "batches", "max_batch", "too_old_heaps", "rejected_heaps"}


def test_capture_text_output(capsys):
    capture = "lo-64-48-8k-multi.pcap"
    status, out, err = run_main(capsys, [str(DATA_DIR / capture), *layout_args(manifest_for(capture))])
    assert status == 0, err
    chunk_lines = [line for line in out.splitlines() if line.startswith("chunk ")]
    assert len(chunk_lines) == 8
    assert chunk_lines[0] == "chunk 122: 4/4 heaps (100.0%) [####] first timestamp 1000000"
    assert "Summary (end of stream):" in out
    assert re.search(r"heaps in chunks\s+32/32 \(100\.0%\)", out)
    assert re.search(r"^\s+heaps\s+33$", out, re.M)
    assert re.search(r"^\s+rejected_heaps\s+2$", out, re.M)
    assert "empty chunks before the first heap" in out  # the window's back-fill is not shown as loss
    assert "\r" not in err  # no progress line: stderr is not a terminal


def test_capture_place_cnt(capsys):
    # Heap counters: 1 is the descriptor heap, 2..33 the data heaps.
    status, out, err = run_main(capsys, [
        str(DATA_DIR / "lo-64-48-8k-multi.pcap"), "--place", "cnt", "--heap-size", "8192",
        "--heaps-per-chunk", "4", "--cnt-first", "2", "--json"])
    assert status == 0, err
    chunks, summary = json_lines(out)
    assert [c["chunk_id"] for c in chunks] == list(range(8))
    assert [c["first_cnt"] for c in chunks] == list(range(2, 34, 4))
    assert all(c["present"] == "1111" for c in chunks)
    assert summary["heaps_placed"] == 32


def test_verify_against_spead2_send(capsys, tmp_path):
    """--verify: a capture written by spead2_send verifies; the bundled
    captures (other payloads) are all reported corrupt."""
    if not _have_send_tool():
        pytest.skip("spead2.tools.send is not available")
    pcap = tmp_path / "send.pcap"
    subprocess.run([sys.executable, "-m", "spead2.tools.send", "--pcap", str(pcap), "127.0.0.1:8888",
                    "--heaps", "64", "--first-timestamp", "1000", "--timestamp-step", "10"],
                   check=True, timeout=60, capture_output=True)
    status, out, err = run_main(capsys, [str(pcap), "--verify", "--json", "--first-timestamp", "1000",
                                         "--timestamp-step", "10", "--heaps-per-chunk", "8"])
    assert status == 0, err
    chunks, summary = json_lines(out)
    assert len(chunks) == 8 and all(c["present"] == "1" * 8 for c in chunks)
    assert summary["verified_heaps"] == 64 and summary["corrupt_heaps"] == 0

    capture = "lo-64-48-8k-multi.pcap"
    status, out, err = run_main(capsys, [str(DATA_DIR / capture), *layout_args(manifest_for(capture)),
                                         "--verify", "--json", "--quiet"])
    assert status == 0, err
    _, summary = json_lines(out)
    assert summary["verified_heaps"] == 0 and summary["corrupt_heaps"] == 32


def test_capture_wrong_heap_size_hint(capsys):
    status, out, err = run_main(capsys, [str(DATA_DIR / "lo-64-48-8k-multi.pcap"), "--heap-size", "1000"])
    assert status == 0, err
    assert "every heap was rejected" in out


def test_several_captures(capsys):
    files = [str(DATA_DIR / "lo-64-48-8k-multi.pcap"), str(DATA_DIR / "lo-64-48-8k-multi.pcapng")]
    status, out, err = run_main(capsys, [*files, *layout_args(manifest_for("lo-64-48-8k-multi.pcap")), "--json"])
    assert status == 0, err
    chunks, summary = json_lines(out)
    assert [c["source"] for c in chunks] == [files[0]] * 8 + [files[1]] * 8
    assert summary["heaps_placed"] == 64
    assert summary["stats"]["heaps"] == 66  # statistics of both streams, summed
    assert summary["leading_empty_chunks"] == 6  # each stream's window back-fills 3


def test_quiet(capsys):
    capture = "lo-64-40-1k-single.pcap"
    status, out, err = run_main(capsys, [str(DATA_DIR / capture), *layout_args(manifest_for(capture)),
                                         "--quiet", "--json"])
    assert status == 0, err
    chunks, summary = json_lines(out)
    assert chunks == []
    assert summary["heaps_placed"] == 64


# ---------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no-such-file.pcap"], "neither an existing file nor HOST:PORT"),
        (["/no/such/dir/capture.pcap"], "neither an existing file nor HOST:PORT"),
        (["127.0.0.1:70000"], "port must be a number"),
        (["127.0.0.1:http"], "port must be a number"),
        (["8000", "--heaps-per-chunk", "3"], "multiple of --channels"),
        (["8000", "--interface", "eth0"], "--interface must be an IPv4 address"),
        (["8000", "--place", "cnt", "--verify"], "--verify needs --place timestamp"),
        (["8000", "--place", "frequency"], "invalid choice"),
        (["8000", "--heap-size", "0"], "is not positive"),
        (["8000", "--duration", "-1"], "is not a positive number"),
        ([str(DATA_DIR / "lo-64-48-8k-multi.pcap"), "8000", "--chunks"], "cannot be mixed"),
        ([], "required"),
        (["8000", "--heaps", "--place", "cnt"], "--place applies to chunk mode (--chunks), not --heaps"),
        (["8000", "--values", "--channels", "4"],
         "--values applies to heap mode (--heaps) (chunk mode was chosen because of --channels)"),
        (["8000", "--chunks", "--mem-pool"], "--mem-pool applies to heap mode (--heaps)"),
        (["8000", "--heaps", "--chunks"], "not allowed with argument"),
        (["8000", "--tcp", "--ibv", "--interface", "10.0.0.1"], "--tcp and --ibv cannot be combined"),
    ],
)
def test_bad_arguments(capsys, argv, message):
    status, out, err = run_main(capsys, argv)
    assert status == 2
    assert message in err
    assert "Traceback" not in err


def test_unresolvable_host(capsys):
    status, out, err = run_main(capsys, ["no-such-host.invalid:8000", "--buffer", "0"])
    assert status == 1
    assert "error:" in err and "no-such-host.invalid" in err


def test_port_in_use(capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        status, out, err = run_main(capsys, [f"127.0.0.1:{s.getsockname()[1]}", "--buffer", "0"])
    assert status == 1
    assert "in use" in err


def test_ibv_unavailable(capsys, monkeypatch):
    """Without ibverbs support, or without a device: a clear error, status 1."""
    monkeypatch.delenv("SPEAD2_IBV_LIBRARY_OVERRIDE", raising=False)
    status, out, err = run_main(capsys, ["127.0.0.1:8000", "--ibv", "--interface", "192.0.2.1"])
    assert status == 1
    assert "error:" in err and "Traceback" not in err
    if not spead2._spead2.recv._ibv_compiled:
        assert "built without ibverbs: install libibverbs-dev and reinstall" in err


def test_ibv_needs_interface(capsys):
    if not spead2._spead2.recv._ibv_compiled:
        pytest.skip("this build has no ibverbs support")
    status, out, err = run_main(capsys, ["127.0.0.1:8000", "--ibv"])
    assert status == 1
    assert "--ibv needs --interface" in err


def _ibv_emulator():
    """The emulated RDMA device of tests/ibv_emulator (built if needed)."""
    out = ROOT / "build" / "ibv-emulator"
    lib = out / "libspead2_ibv_emulator.so"
    if not lib.exists():
        result = subprocess.run(["bash", str(ROOT / "tests" / "ibv_emulator" / "build.sh"), str(out)],
                                capture_output=True, text=True, timeout=600 * SLOW)
        if result.returncode != 0 or not lib.exists():
            pytest.skip(f"could not build the ibverbs emulator: {result.stderr[-500:]}")
    return lib


def test_ibv_via_emulator(tmp_path):
    """--ibv on the emulated device, fed with a capture from spead2_send."""
    if not spead2._spead2.recv._ibv_compiled:
        pytest.skip("this build has no ibverbs support")
    if not _have_send_tool():
        pytest.skip("spead2.tools.send is not available")
    lib = _ibv_emulator()
    pcap = tmp_path / "traffic.pcap"
    subprocess.run([sys.executable, "-m", "spead2.tools.send", "--pcap", str(pcap), "239.10.0.1:7148",
                    "--heaps", "64"], check=True, timeout=60, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEAD2_EMU_")}
    env.update(SPEAD2_IBV_LIBRARY_OVERRIDE=str(lib), SPEAD2_EMU_INTERFACE="127.0.0.1",
               SPEAD2_EMU_WIRE=f"pcap:{pcap}", SPEAD2_EMU_PCAP_LOSSLESS="1")
    proc = subprocess.run([*RECV, "239.10.0.1:7148", "--ibv", "--interface", "127.0.0.1", "--verify", "--json",
                           "--duration", "30"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    chunks, summary = json_lines(proc.stdout)
    assert summary["stopped_by"] == "end of stream"
    assert len(chunks) == 16 and all(c["present"] == "1111" for c in chunks)
    assert summary["verified_heaps"] == 64 and summary["corrupt_heaps"] == 0


def test_parse_source():
    parse = recv_tool.parse_source
    assert parse("8888").kind == "udp" and parse("8888").host == ""
    s = parse("127.0.0.1:8888")
    assert (s.kind, s.host, s.port) == ("udp", "127.0.0.1", 8888)
    s = parse(":8888")
    assert (s.kind, s.host, s.port) == ("udp", "", 8888)
    s = parse("239.1.2.3:7148")
    assert (s.kind, s.host, s.port) == ("multicast4", "239.1.2.3", 7148)
    s = parse("[ff14::1]:7148")
    assert (s.kind, s.host, s.port) == ("multicast6", "ff14::1", 7148)
    s = parse("[::1]:7148")
    assert (s.kind, s.host) == ("udp", "::1")
    s = parse("localhost:7148")
    assert (s.kind, s.host) == ("udp", "localhost")
    s = parse(str(DATA_DIR / "lo-64-48-8k-multi.pcap"))
    assert s.kind == "file"


# ---------------------------------------------------------------------------
# Live: UDP, signals, terminals


def _have_send_tool():
    import importlib.util

    return importlib.util.find_spec("spead2.tools.send") is not None


def test_udp_loopback_from_spead2_send():
    if not _have_send_tool():
        pytest.skip("spead2.tools.send is not available")
    port = free_port()
    # The default socket buffer (8 MiB, or what net.core.rmem_max allows):
    # the OS default (--buffer 0) is too small to ride out a busy machine.
    proc = subprocess.Popen([*RECV, f"127.0.0.1:{port}", "--json", "--verify"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(proc, "receiving from")
        subprocess.run([sys.executable, "-m", "spead2.tools.send", f"127.0.0.1:{port}", "--heaps", "200",
                        "--rate", "0.2"], check=True, timeout=30, capture_output=True)
        out, err = proc.communicate(timeout=30 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    chunks, summary = json_lines(out)
    assert summary["stopped_by"] == "end of stream"  # spead2_send's end-of-stream heap
    assert len(chunks) == 50
    assert all(c["present"] == "1111" for c in chunks)
    assert [c["first_timestamp"] for c in chunks] == list(range(50))
    assert summary["verified_heaps"] == 200 and summary["corrupt_heaps"] == 0


def _start_receiving(*extra):
    port = free_port()
    proc = subprocess.Popen([*RECV, f"127.0.0.1:{port}", "--buffer", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_line(proc, "receiving from")
    return proc, port


def _send_some(port, n=8):
    """A few heaps from our sender (heap counter placement), no end heap."""
    import numpy as np
    import spead2.send

    stream = spead2.send.UdpStream(spead2.ThreadPool(), [("127.0.0.1", port)],
                                   spead2.send.StreamConfig(max_packet_size=1472))
    ig = spead2.send.ItemGroup()
    ig.add_item(0x3000, "payload", "", shape=(8192,), dtype=np.uint8)
    ig["payload"].value = np.zeros(8192, np.uint8)
    for cnt in range(1, n + 1):
        stream.send_heap(ig.get_heap(descriptors="none", data="all"), cnt=cnt)


@pytest.mark.parametrize("output", ["json", "text"])
def test_sigint_prints_summary(output):
    # One chunk in the window: chunk 0 (heaps 1-4) leaves it when heap 5
    # arrives; chunk 1 is still in the window at the signal, and a stop
    # drops such chunks (as the reference does).
    extra = ["--place", "cnt", "--heaps-per-chunk", "4", "--max-chunks", "1"]
    extra += ["--json"] if output == "json" else []
    proc, port = _start_receiving(*extra)
    try:
        _send_some(port)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    if output == "json":
        chunks, summary = json_lines(out)
        assert summary["stopped_by"] == "signal SIGINT"
        assert summary["stats"]["packets"] == 8 * 6  # 8 KiB heaps in 6 packets
        assert [(c["chunk_id"], c["present"]) for c in chunks] == [(0, "1111")]
    else:
        assert "chunk 0: 4/4 heaps (100.0%) [####] first cnt 1" in out
        assert "Summary (signal SIGINT):" in out
        assert re.search(r"^\s+packets\s+48$", out, re.M)


def test_sigterm_also_stops_cleanly():
    proc, port = _start_receiving("--json", "--chunks")
    try:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    _, summary = json_lines(out)
    assert summary["stopped_by"] == "signal SIGTERM"


def test_duration():
    port = free_port()
    start = time.monotonic()
    proc = subprocess.run([*RECV, f"127.0.0.1:{port}", "--buffer", "0", "--duration", "0.5", "--json",
                           "--chunks"],
                          capture_output=True, text=True, timeout=30 * SLOW)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 20 * SLOW  # --duration 0.5 stops it; only a hang takes this long
    _, summary = json_lines(proc.stdout)
    assert summary["stopped_by"] == "duration"
    assert summary["chunks"] == 0


def test_progress_on_a_terminal():
    port = free_port()
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([*RECV, f"127.0.0.1:{port}", "--buffer", "0", "--duration", "1.6",
                                 "--chunks"],
                                stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        slave = None
        captured = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the other side is closed
                    break
                if not data:
                    break
                captured += data
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=15 * SLOW)
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    text = captured.decode(errors="replace")
    # Redrawn in place (\r, erase to end of line), about twice a second.
    assert text.count("\x1b[K") >= 2, text
    assert text.count("Gb/s") >= 2 and "pkt/s" in text and "chunks 0" in text
    assert "Summary (duration):" in out
    assert "\r" not in out


def test_quiet_terminal_has_no_progress():
    port = free_port()
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([*RECV, f"127.0.0.1:{port}", "--buffer", "0", "--duration", "0.8", "--quiet",
                               "--chunks"],
                              stdout=subprocess.PIPE, stderr=slave, text=True, timeout=30 * SLOW)
        os.set_blocking(master, False)
        try:
            text = os.read(master, 65536).decode(errors="replace")
        except (BlockingIOError, OSError):
            text = ""
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    assert "\r" not in text
    assert "Summary (duration):" in proc.stdout


def test_console_script():
    script = shutil.which("spead2_recv")
    if script is None:
        pytest.skip("the spead2_recv script is not on PATH")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30 * SLOW)
    assert proc.returncode == 0
    assert "--place" in proc.stdout and "--json" in proc.stdout


# ---------------------------------------------------------------------------
# --streams: a chunk stream group


def _split_pcap_by_port(src, dst_a, dst_b):
    """Split a pcap (Ethernet/IPv4/UDP, as spead2_send writes) by even/odd UDP destination port."""
    data = src.read_bytes()
    header, pos = data[:24], 24
    outs = {0: bytearray(header), 1: bytearray(header)}
    while pos < len(data):
        caplen = int.from_bytes(data[pos + 8:pos + 12], "little")
        record = data[pos:pos + 16 + caplen]
        port = int.from_bytes(record[16 + 14 + 20 + 2:16 + 14 + 20 + 4], "big")
        outs[port % 2] += record
        pos += 16 + caplen
    dst_a.write_bytes(bytes(outs[0]))
    dst_b.write_bytes(bytes(outs[1]))


def test_streams_captures(capsys, tmp_path):
    """--streams 2: two captures (the two halves of one stream) replayed into one chunk sequence."""
    if not _have_send_tool():
        pytest.skip("spead2.tools.send is not available")
    pcap = tmp_path / "send.pcap"
    subprocess.run([sys.executable, "-m", "spead2.tools.send", "--pcap", str(pcap), "127.0.0.1:8888",
                    "127.0.0.1:8889", "--heaps", "64", "--timestamp-step", "10"],
                   check=True, timeout=60, capture_output=True)
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    _split_pcap_by_port(pcap, a, b)
    status, out, err = run_main(capsys, [str(a), str(b), "--streams", "2", "--eviction", "lossless",
                                         "--verify", "--json", "--timestamp-step", "10",
                                         "--heaps-per-chunk", "8"])
    assert status == 0, err
    chunks, summary = json_lines(out)
    assert [c["chunk_id"] for c in chunks] == list(range(8))
    assert all(c["present"] == "1" * 8 for c in chunks)
    assert summary["verified_heaps"] == 64 and summary["corrupt_heaps"] == 0
    members = summary["member_stats"]
    assert len(members) == 2
    assert [m["heaps"] for m in members] == [32, 32]
    assert summary["stats"]["heaps"] == 64


def test_streams_text_summary(capsys, tmp_path):
    capture = "lo-64-48-8k-multi.pcap"
    status, out, err = run_main(capsys, [str(DATA_DIR / capture), *layout_args(manifest_for(capture)),
                                         "--streams", "1", "--quiet"])
    assert status == 0, err
    assert re.search(r"^\s+total\s+stream 0$", out, re.M)
    assert re.search(r"^\s+heaps\s+33\s+33$", out, re.M)


@pytest.mark.parametrize("argv, message", [
    (["8000", "8001", "--streams", "3"], "--streams 3 needs at least 3 sources"),
    (["8000", "--streams", "0"], "is not positive"),
    (["8000", "--cores", "1"], "--cores needs --streams"),
    (["8000", "8001", "--streams", "2", "--cores", "1"], "one core per stream"),
    (["8000", "--streams", "1", "--cores", "x"], "not a comma-separated list"),
    (["8000", "--streams", "1", "--eviction", "sometimes"], "invalid choice"),
])
def test_streams_bad_arguments(capsys, argv, message):
    status, out, err = run_main(capsys, argv)
    assert status == 2
    assert message in err


def test_streams_udp_two_ports():
    """--streams 2 on two UDP ports, fed by spead2_send to both."""
    if not _have_send_tool():
        pytest.skip("spead2.tools.send is not available")
    ports = [free_port(), free_port()]
    proc = subprocess.Popen([*RECV, *(f"127.0.0.1:{p}" for p in ports), "--streams", "2", "--eviction",
                             "lossless", "--verify", "--json", "--heaps-per-chunk", "8", "--duration", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(proc, "with 2 streams")
        subprocess.run([sys.executable, "-m", "spead2.tools.send", *(f"127.0.0.1:{p}" for p in ports),
                        "--heaps", "64", "--rate", "0.05"], check=True, timeout=60 * SLOW, capture_output=True)
        out, err = proc.communicate(timeout=60 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    chunks, summary = json_lines(out)
    # Each member stops at the end-of-stream heap sent to it; the group ends
    # when both have.
    assert summary["stopped_by"] == "end of stream"
    assert summary["verified_heaps"] == 64 and summary["corrupt_heaps"] == 0
    assert [m["heaps"] for m in summary["member_stats"]] == [32, 32]


# ---------------------------------------------------------------------------
# Heap mode (the default without chunk options)

#: Runs the reference's spead2_recv (spead2.tools.recv_asyncio) with the given arguments.
REFERENCE_TOOL = """
import sys
sys.argv = ["spead2_recv"] + sys.argv[1:]
from spead2.tools import recv_asyncio
recv_asyncio.main()
"""


@pytest.mark.parametrize("options", [[], ["--values"], ["--descriptors", "--values"]], ids=str)
# The reference reads neither pcapng nor the SLL2 link type of the "any" capture.
@pytest.mark.parametrize("capture", [c for c in CAPTURES if c.startswith("lo-") and c.endswith(".pcap")])
def test_heap_mode_matches_reference_tool(capsys, capture, options):
    """Our output is the reference tool's, line for line (heaps, items, values,
    descriptors, the stream statistics).  A ring that holds every heap keeps
    worker_blocked independent of timing."""
    argv = [str(DATA_DIR / capture), *options, "--ring-heaps", "1000"]
    status, out, err = run_main(capsys, argv)
    assert status == 0, err
    ref = refvenv.run_reference(REFERENCE_TOOL, *argv)
    assert out == ref.stdout
    assert out.startswith(f"Received heap 1 on stream {DATA_DIR / capture}\n")


def test_heap_mode_json(capsys):
    capture = DATA_DIR / "lo-64-48-8k-multi.pcap"
    status, out, err = run_main(capsys, [str(capture), "--json", "--values", "--descriptors"])
    assert status == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    heaps = [r for r in records if r["type"] == "heap"]
    assert records[-1]["type"] == "summary" and records[-1] is not heaps[-1]
    summary = records[-1]
    assert summary["heaps"] == len(heaps) == 33 and summary["stream"] == str(capture)
    assert summary["stopped_by"] == "end of stream"
    assert summary["stats"]["heaps"] == 33 and summary["stats"]["packets"] == 194
    assert [d["name"] for d in heaps[0]["descriptors"]] == ["timestamp", "frequency", "data"]
    assert heaps[0]["descriptors"][2]["shape"] == [8192] and heaps[0]["descriptors"][2]["dtype"] == "uint8"
    assert heaps[1]["items"]["timestamp"] == 1000000 and heaps[1]["items"]["frequency"] == 0
    assert len(heaps[1]["items"]["data"]) == 8192


def test_heap_mode_memory_pool_and_joint(capsys):
    """--mem-pool and --joint (two captures into one stream) give the same
    heaps; --count stops early."""
    capture = str(DATA_DIR / "lo-64-48-8k-multi.pcap")
    status, plain, err = run_main(capsys, [capture, "--values", "--ring-heaps", "1000"])
    assert status == 0, err
    status, pooled, err = run_main(capsys, [capture, "--values", "--ring-heaps", "1000", "--mem-pool",
                                            "--mem-lower", "0", "--mem-upper", "9000"])
    assert status == 0, err
    assert pooled == plain
    status, joint, err = run_main(capsys, [capture, capture, "--joint", "--quiet"])
    assert status == 0, err
    assert joint.startswith(f"Shutting down stream {capture} after ")
    for other in CAPTURES:   # every capture we read, the reference's or not
        status, out, err = run_main(capsys, [str(DATA_DIR / other), "--quiet"])
        assert status == 0, err
        assert out.startswith(f"Shutting down stream {DATA_DIR / other} after ")
    status, counted, err = run_main(capsys, [capture, "--count", "5"])
    assert status == 0, err
    assert counted.count("Received heap") == 5
    assert f"Shutting down stream {capture} after 5 heaps" in counted


def test_heap_mode_udp_from_our_sender():
    proc, port = _start_receiving("--count", "8")
    try:
        _send_some(port)
        out, err = proc.communicate(timeout=30 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert [line for line in out.splitlines() if line.startswith("Received")] == [
        f"Received heap {cnt} on stream 127.0.0.1:{port}" for cnt in range(1, 9)]
    assert f"Shutting down stream 127.0.0.1:{port} after 8 heaps" in out
    assert "packets: 48" in out


def _tcp_traffic():
    """Bytes of a few heaps (descriptors, values, end of stream) from our sender."""
    import numpy as np
    import spead2.send

    stream = spead2.send.BytesStream(spead2.ThreadPool(), spead2.send.StreamConfig(max_packet_size=1024))
    ig = spead2.send.ItemGroup()
    ig.add_item(0x1000, "counter", "a counter", (), format=[("u", 32)])
    ig.add_item(0x1001, "samples", "some samples", (3, 2), dtype=np.int16)
    for k in range(3):
        ig["counter"].value = k
        ig["samples"].value = np.arange(6, dtype=np.int16).reshape(3, 2) * (k - 1)
        stream.send_heap(ig.get_heap())
    stream.send_heap(ig.get_end())
    return stream.getvalue()


def _tcp_run(start, port, data):
    proc = start()
    try:
        deadline = time.monotonic() + 30 * SLOW
        while True:   # the listener exists once the tool is up
            try:
                conn = socket.create_connection(("127.0.0.1", port))
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        with conn:
            conn.sendall(data)
        out, err = proc.communicate(timeout=30 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    # Batching depends on how the kernel splits the byte stream.
    return [line for line in out.splitlines() if not line.startswith(("batches:", "max_batch:"))]


def test_heap_mode_tcp_matches_reference_tool():
    data = _tcp_traffic()
    port = free_port()
    argv = [f"127.0.0.1:{port}", "--tcp", "--values", "--descriptors", "--ring-heaps", "64"]
    ours = _tcp_run(lambda: subprocess.Popen([*RECV, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True), port, data)
    ref = _tcp_run(lambda: refvenv.start_reference(REFERENCE_TOOL, *argv), port, data)
    assert ours == ref
    assert ours[0] == f"Received heap 1 on stream 127.0.0.1:{port}"
    assert "counter = 2" in ours
    assert f"Shutting down stream 127.0.0.1:{port} after 3 heaps" in ours


def test_tcp_multicast_is_an_error(capsys):
    status, out, err = run_main(capsys, ["239.1.2.3:8000", "--tcp"])
    assert status == 1
    assert "--tcp cannot receive from a multicast group" in err


def test_chunk_mode_needs_no_numba():
    """Chunk mode places heaps with the built-in (C++) placements: it works
    where numba and scipy cannot be imported."""
    capture = "lo-64-48-8k-multi.pcap"
    code = ("import sys; sys.modules['numba'] = None; sys.modules['scipy'] = None\n"
            "from spead2.tools import recv\n"
            "sys.exit(recv.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(DATA_DIR / capture), "--chunks",
                           *layout_args(manifest_for(capture)), "--json"],
                          capture_output=True, text=True, timeout=60 * SLOW)
    assert proc.returncode == 0, proc.stderr
    chunks, summary = json_lines(proc.stdout)
    assert summary["heaps_placed"] == 32


def test_live_json(capsys, tmp_path):
    """--live --json: 'live' records with each stream's counts, the rings and
    the group window; the last one agrees with the summary."""
    capture = "lo-64-48-8k-multi.pcap"
    status, out, err = run_main(capsys, [str(DATA_DIR / capture), "--streams", "1", "--live", "--json",
                                         *layout_args(manifest_for(capture))])
    assert status == 0, err
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    live = [r for r in records if r["type"] == "live"]
    summary = records[-1]
    assert summary["type"] == "summary"
    assert live and not [r for r in records if r["type"] == "chunk"]   # the view replaces chunk lines
    last = live[-1]
    assert last["streams"][0]["packets"] == summary["member_stats"][0]["packets"]
    assert last["streams"][0]["heaps"] == summary["member_stats"][0]["heaps"]
    assert set(last["rings"]) == {"data", "free"}
    assert last["rings"]["data"]["capacity"] >= 1 and "high_water_mark" in last["rings"]["data"]
    assert "chunks_in_window" in last["group"]
    assert last["heaps_placed"] == summary["heaps_placed"] == 32


def test_live_text(capsys):
    capture = "lo-64-48-8k-multi.pcap"
    status, out, err = run_main(capsys, [str(DATA_DIR / capture), "--live", *layout_args(manifest_for(capture))])
    assert status == 0, err
    assert re.search(r"^\s+stream\s+pkt/s\s+packets\s+heaps", err, re.M)
    assert "data ring" in err and "free ring" in err
    assert "Summary (end of stream)" in out
    assert "chunk " not in out.split("Summary")[0]   # no chunk lines


def test_live_needs_chunk_mode(capsys):
    status, out, err = run_main(capsys, ["8000", "--heaps", "--live"])
    assert status == 2
    assert "--live applies to chunk mode" in err
