"""The spead2_send tool (spead2.tools.send).

Traffic goes into pcap files and over UDP loopback, and comes back through
our own chunk stream, which checks every heap's immediates (by placing it)
and payload (against the documented pattern).
"""

import io
import math
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import spead2
import spead2.recv
from spead2.tools import send as send_tool
from spead_builder import CTRL_STREAM_STOP, STREAM_CTRL_ID, parse_packet

pytestmark = pytest.mark.timeout(60)

HERE = pathlib.Path(__file__).resolve().parent


# ---------------------------------------------------------------------------
# Helpers

def pcap_payloads(path):
    """UDP payloads of an Ethernet/IPv4 pcap file, as written by PcapFileStream."""
    blob = pathlib.Path(path).read_bytes()
    assert blob[:4] in (b"\x4d\x3c\xb2\xa1", b"\xd4\xc3\xb2\xa1"), "not a little-endian pcap file"
    pos = 24
    out = []
    while pos + 16 <= len(blob):
        caplen = int.from_bytes(blob[pos + 8:pos + 12], "little")
        frame = blob[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        assert frame[12:14] == b"\x08\x00"
        ip = frame[14:]
        ihl = (ip[0] & 0xF) * 4
        udp = ip[ihl:]
        length = int.from_bytes(udp[4:6], "big")
        out.append(bytes(udp[8:length]))
    return out


def run_tool(*args, timeout=30):
    """Run ``python -m spead2.tools.send`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "spead2.tools.send", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=HERE)


class Receiver:
    """A chunk stream laid out like spead2_send's traffic: one chunk per
    timestamp, one heap slot per channel."""

    def __init__(self, make_place_capture, heaps, channels, heap_size, channel_step, timestamp_step=1,
                 first_timestamp=0):
        self.channels = channels
        self.heap_size = heap_size
        self.bound = make_place_capture(first_timestamp, timestamp_step, channel_step, channels, heap_size)
        self.n_chunks = math.ceil(heaps / channels) + 4
        self.data_ring = spead2.recv.ChunkRingbuffer(self.n_chunks)
        self.stream = spead2.recv.ChunkRingStream(
            spead2.ThreadPool(),
            spead2.recv.StreamConfig(max_heaps=8),
            spead2.recv.ChunkStreamConfig(items=[0x1600, 0x4103, spead2.HEAP_LENGTH_ID], max_chunks=4,
                                          place=self.bound.llc),
            self.data_ring,
            spead2.recv.ChunkRingbuffer(self.n_chunks),
        )
        for _ in range(self.n_chunks):
            self.stream.add_free_chunk(spead2.recv.Chunk(
                present=np.zeros(channels, np.uint8), data=np.zeros(channels * heap_size, np.uint8)))

    def collect(self, timeout=30):
        """{heap index: payload} of every heap received, until the stream stops."""
        watchdog = threading.Timer(timeout, self.stream.stop)
        watchdog.start()
        try:
            heaps = {}
            for chunk in self.data_ring:
                for slot in np.flatnonzero(chunk.present):
                    index = chunk.chunk_id * self.channels + int(slot)
                    heaps[index] = chunk.data[slot * self.heap_size:(slot + 1) * self.heap_size].copy()
            self.stream.stop()
        finally:
            watchdog.cancel()
        return heaps


def check_heaps(heaps, indices, heap_size):
    assert sorted(heaps) == sorted(indices)
    for index in indices:
        np.testing.assert_array_equal(heaps[index], send_tool.expected_payload(index, heap_size),
                                      err_msg=f"payload of heap {index}")


# ---------------------------------------------------------------------------
# The traffic itself

def test_expected_payload_pattern():
    assert send_tool.expected_payload(0, 4).tolist() == [0, 1, 2, 3]
    assert send_tool.expected_payload(254, 4).tolist() == [254, 255, 0, 1]
    traffic = send_tool.Traffic(heap_size=300, channels=3, channel_step=10, timestamp_step=7, first_timestamp=5)
    for index in (0, 1, 255, 256, 1000):
        np.testing.assert_array_equal(traffic.payload(index), send_tool.expected_payload(index, 300))
        assert traffic.index(traffic.timestamp(index), traffic.channel(index)) == index
    assert [traffic.channel(i) for i in range(4)] == [0, 10, 20, 0]
    assert [traffic.timestamp(i) for i in range(7)] == [5, 5, 5, 12, 12, 12, 19]


def test_timestamp_wraps_at_address_bits():
    traffic = send_tool.Traffic(heap_size=16, channels=1, timestamp_step=100, flavour=spead2.Flavour(4, 64, 8, 0))
    assert traffic.timestamp(3) == 44  # 300 mod 256


# ---------------------------------------------------------------------------
# pcap output, replayed into a chunk stream

@pytest.mark.parametrize(
    "heap_size,addr_bits,packet,channels",
    [(8192, 48, 1472, 4), (1024, 40, 1472, 8), (6000, 40, 9000, 3), (300, 48, 100, 2)],
    ids=["8k-multi", "1k-single", "6k-jumbo", "tiny-packets"],
)
def test_pcap_replay(make_place_capture, tmp_path, heap_size, addr_bits, packet, channels):
    n_heaps = 50
    path = tmp_path / "traffic.pcap"
    out = io.StringIO()
    args = send_tool.build_parser().parse_args([
        "--pcap", str(path), "--heaps", str(n_heaps), "--heap-size", str(heap_size), "--addr-bits", str(addr_bits),
        "--packet", str(packet), "--channels", str(channels), "--timestamp-step", "1000", "--first-timestamp",
        "2000", "--descriptors", "--verbose",
    ])
    assert send_tool.run(args, out=out) == 0
    payloads = pcap_payloads(path)
    assert max(len(p) for p in payloads) <= packet
    packets = [parse_packet(p) for p in payloads]
    assert all(p is not None and p.heap_address_bits == addr_bits for p in packets)
    # descriptors first, stop last
    assert packets[-1].immediates.get(STREAM_CTRL_ID) == CTRL_STREAM_STOP
    assert 0x1600 not in packets[0].immediates
    summary = out.getvalue()
    assert f"sent {n_heaps} data heaps ({n_heaps + 2} heaps in all), {len(payloads)} packets, " \
           f"{sum(map(len, payloads))} bytes" in summary

    channel_step = max(1, heap_size // 4)
    receiver = Receiver(make_place_capture, n_heaps, channels, heap_size, channel_step, 1000, 2000)
    receiver.stream.add_udp_pcap_file_reader(str(path))
    check_heaps(receiver.collect(), range(n_heaps), heap_size)
    stats = receiver.stream.stats
    assert stats["packets"] == len(payloads)
    assert stats["rejected_heaps"] == 2  # descriptors and stop
    assert stats["incomplete_heaps_evicted"] == 0


def test_manifest_and_demo(tmp_path):
    """--manifest writes what python -m spead2.tools.demo verifies a capture against."""
    pytest.importorskip("numba")
    pytest.importorskip("scipy")
    from spead2.tools import demo

    path = tmp_path / "ci.pcap"
    assert send_tool.main(["--pcap", str(path), "--heaps", "24", "--heap-size", "2048", "--channels", "4",
                           "--timestamp-step", "4096", "--first-timestamp", "1000000", "--descriptors",
                           "--manifest", str(tmp_path / "ci.json")]) == 0
    out = io.StringIO()
    assert demo.replay(path, out=out), out.getvalue()
    assert "24/24 heaps verified" in out.getvalue()


def test_make_capture_example(tmp_path):
    """examples/make_capture.py, shown in doc/send.rst, makes a capture that replays and verifies."""
    pytest.importorskip("numba")
    pytest.importorskip("scipy")
    from spead2.tools import demo

    proc = subprocess.run([sys.executable, str(HERE.parent / "examples" / "make_capture.py"), "ci.pcap"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = io.StringIO()
    assert demo.replay(tmp_path / "ci.pcap", out=out), out.getvalue()
    assert "32/32 heaps verified" in out.getvalue()


def test_repeat_pointers(make_place_capture, tmp_path):
    path = tmp_path / "r.pcap"
    assert send_tool.main(["--pcap", str(path), "--heaps", "8", "--heap-size", "5000", "--channels", "2",
                           "--repeat-pointers"]) == 0
    packets = [parse_packet(p) for p in pcap_payloads(path)][:-1]
    assert len(packets) == 8 * 4
    assert all(0x1600 in p.immediates and 0x4103 in p.immediates for p in packets)
    receiver = Receiver(make_place_capture, 8, 2, 5000, 1250)
    receiver.stream.add_udp_pcap_file_reader(str(path))
    check_heaps(receiver.collect(), range(8), 5000)


def test_module_entry_point(tmp_path):
    path = tmp_path / "m.pcap"
    proc = run_tool("--pcap", path, "--heaps", 5, "--heap-size", 100, "-v")
    assert proc.returncode == 0, proc.stderr
    assert "sent 5 data heaps (6 heaps in all), 6 packets" in proc.stdout
    assert "Gb/s" in proc.stdout and "packets/s" in proc.stdout
    assert len(pcap_payloads(path)) == 6


def test_console_script(tmp_path):
    exe = shutil.which("spead2_send", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("the spead2_send console script is not installed")
    proc = subprocess.run([exe, "--pcap", str(tmp_path / "c.pcap"), "--heaps", "3", "-v"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "sent 3 data heaps" in proc.stdout


def test_rate_limit(tmp_path):
    """--rate is honoured (roughly here; see test_send_rate.py for the precise check)."""
    out = io.StringIO()
    args = send_tool.build_parser().parse_args(
        ["--pcap", str(tmp_path / "r.pcap"), "--heaps", "400", "--heap-size", "8192", "--rate", "0.4", "-v"])
    start = time.perf_counter()
    assert send_tool.run(args, out=out) == 0
    elapsed = time.perf_counter() - start
    total = (tmp_path / "r.pcap").stat().st_size
    assert total > 400 * 8192
    # 400 heaps of ~8.8 kB at 0.4 Gb/s take ~70 ms; unlimited this takes a few ms.
    assert elapsed > 0.8 * 400 * 8192 * 8 / 0.4e9


def test_interrupt_sends_end(tmp_path):
    """Ctrl-C on an unbounded run stops cleanly, after the end-of-stream heap."""
    path = tmp_path / "i.pcap"
    proc = subprocess.Popen([sys.executable, "-m", "spead2.tools.send", "--pcap", str(path), "--rate", "0.05",
                             "--heap-size", "1000", "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not path.exists() or path.stat().st_size < 20000):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "interrupted" in err
    assert "Traceback" not in err
    assert out.startswith("interrupted after ")
    packets = [parse_packet(p) for p in pcap_payloads(path)]
    assert packets[-1].immediates.get(STREAM_CTRL_ID) == CTRL_STREAM_STOP
    data = [p for p in packets if 0x1600 in p.immediates]
    assert len(data) >= 10
    channel_step = 250
    indices = [p.immediates[0x1600] * 4 + p.immediates[0x4103] // channel_step for p in data]
    assert indices == list(range(len(data)))
    # The summary counts exactly what was sent: the heap in flight was finished.
    assert out.split()[2] == str(len(data)), out


# ---------------------------------------------------------------------------
# UDP loopback

def _bound_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_udp_loopback(make_place_capture):
    n_heaps, channels, heap_size = 64, 4, 8192
    receiver = Receiver(make_place_capture, n_heaps, channels, heap_size, heap_size // 4)
    sock = _bound_socket()
    try:
        receiver.stream.add_udp_reader(sock)
        port = sock.getsockname()[1]
        assert send_tool.main([f"127.0.0.1:{port}", "--heaps", str(n_heaps), "--rate", "0.5", "--descriptors",
                               "--bind", "127.0.0.1"]) == 0
        heaps = receiver.collect()  # stopped by the end-of-stream heap
    finally:
        sock.close()
    check_heaps(heaps, range(n_heaps), heap_size)
    assert receiver.stream.stats["rejected_heaps"] == 2


def test_udp_round_robin(make_place_capture):
    """Data heaps alternate between destinations; each gets its own end-of-stream."""
    n_heaps, channels, heap_size = 40, 4, 1024
    receivers = [Receiver(make_place_capture, n_heaps, channels, heap_size, 256) for _ in range(2)]
    sockets = [_bound_socket() for _ in receivers]
    try:
        for receiver, sock in zip(receivers, sockets):
            receiver.stream.add_udp_reader(sock)
        destinations = [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
        assert send_tool.main([*destinations, "--heaps", str(n_heaps), "--heap-size", str(heap_size),
                               "--rate", "0.5", "--no-gso", "--buffer", "1000000"]) == 0
        results = [receiver.collect() for receiver in receivers]
    finally:
        for sock in sockets:
            sock.close()
    check_heaps(results[0], range(0, n_heaps, 2), heap_size)
    check_heaps(results[1], range(1, n_heaps, 2), heap_size)


def test_tcp(make_place_capture):
    """--tcp: one connection to our chunk stream's TCP reader."""
    n_heaps, channels, heap_size = 40, 4, 5000
    receiver = Receiver(make_place_capture, n_heaps, channels, heap_size, heap_size // 4)
    acceptor = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        acceptor.bind(("127.0.0.1", 0))
        acceptor.listen(1)
        receiver.stream.add_tcp_reader(acceptor)
        port = acceptor.getsockname()[1]
        assert send_tool.main(["--tcp", f"127.0.0.1:{port}", "--heaps", str(n_heaps), "--heap-size",
                               str(heap_size), "--descriptors", "--bind", "127.0.0.1", "--buffer", "100000",
                               "--connect-timeout", "10", "--packet", "9000"]) == 0
        heaps = receiver.collect()
    finally:
        acceptor.close()
    check_heaps(heaps, range(n_heaps), heap_size)


def _has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("form", ["[::1]:{}", "::1:{}"])
def test_udp_ipv6(make_place_capture, form):
    n_heaps, channels, heap_size = 24, 4, 3000
    receiver = Receiver(make_place_capture, n_heaps, channels, heap_size, heap_size // 4)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.bind(("::1", 0))
        receiver.stream.add_udp_reader(sock)
        assert send_tool.main([form.format(sock.getsockname()[1]), "--heaps", str(n_heaps), "--heap-size",
                               str(heap_size), "--rate", "0.2", "--rate-method", "sw"]) == 0
        heaps = receiver.collect()
    finally:
        sock.close()
    check_heaps(heaps, range(n_heaps), heap_size)


def _pcap_destinations(path):
    """(destination port, heap cnt) of every frame of a pcap file, in order."""
    out = []
    for payload, frame_port in zip(pcap_payloads(path), _pcap_ports(path)):
        out.append((frame_port, parse_packet(payload).heap_cnt))
    return out


def _pcap_ports(path):
    blob = pathlib.Path(path).read_bytes()
    pos, ports = 24, []
    while pos < len(blob):
        caplen = int.from_bytes(blob[pos + 8:pos + 12], "little")
        frame = blob[pos + 16:pos + 16 + caplen]
        ports.append(int.from_bytes(frame[36:38], "big"))
        pos += 16 + caplen
    return ports


@pytest.mark.parametrize("mode", ["round-robin", "serial"])
def test_group_mode(make_place_capture, tmp_path, mode):
    """--group-mode sends a data heap per destination in one send_heaps call:
    round-robin interleaves their packets, serial sends heap after heap; the
    heaps decode the same either way."""
    path = tmp_path / "g.pcap"
    n_heaps, channels, heap_size = 6, 3, 4000   # 3 packets per heap at --packet 1472
    assert send_tool.main(["--pcap", str(path), "--heaps", str(n_heaps), "--heap-size", str(heap_size),
                           "--channels", str(channels), "--group-mode", mode, "--no-end",
                           "127.0.0.1:7000", "127.0.0.1:7001"]) == 0
    frames = _pcap_destinations(path)
    assert len(frames) == n_heaps * 3
    first_group = [port for port, _ in frames[:6]]
    if mode == "round-robin":
        assert first_group == [7000, 7001] * 3
    else:
        assert first_group == [7000] * 3 + [7001] * 3
    # Heap i (cnt i + 1) goes to destination i % 2.
    assert all(port == 7000 + (cnt - 1) % 2 for port, cnt in frames)
    receiver = Receiver(make_place_capture, n_heaps, channels, heap_size, heap_size // 4)
    receiver.stream.add_udp_pcap_file_reader(str(path))
    check_heaps(receiver.collect(), range(n_heaps), heap_size)


def test_group_size(tmp_path):
    """--group-size N: N heaps per group (cnts 1..N interleaved), the last group shorter."""
    path = tmp_path / "s.pcap"
    assert send_tool.main(["--pcap", str(path), "--heaps", "5", "--heap-size", "2000", "--group-mode",
                           "round-robin", "--group-size", "3", "--no-end"]) == 0
    cnts = [cnt for _, cnt in _pcap_destinations(path)]
    assert cnts == [1, 2, 3, 1, 2, 3, 4, 5, 4, 5]


def test_tcp_refused():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    proc = run_tool("--tcp", f"127.0.0.1:{port}", "--heaps", "1")
    assert proc.returncode == 2
    assert f"cannot send to 127.0.0.1:{port}" in proc.stderr
    assert "Connection refused" in proc.stderr


def test_no_end(make_place_capture, tmp_path):
    path = tmp_path / "n.pcap"
    assert send_tool.main(["--pcap", str(path), "--heaps", "3", "--no-end", "--heap-size", "64"]) == 0
    packets = [parse_packet(p) for p in pcap_payloads(path)]
    assert len(packets) == 3
    assert all(STREAM_CTRL_ID not in p.immediates for p in packets)


def test_pcap_destinations(tmp_path):
    path = tmp_path / "d.pcap"
    assert send_tool.main(["--pcap", str(path), "--heaps", "4", "--heap-size", "64", "239.1.2.3:7148",
                           "10.0.0.1:7149"]) == 0
    blob = path.read_bytes()
    # IPv4 destination and UDP port of each frame: heaps alternate, the stop heap goes to both.
    pos, seen = 24, []
    while pos < len(blob):
        caplen = int.from_bytes(blob[pos + 8:pos + 12], "little")
        frame = blob[pos + 16:pos + 16 + caplen]
        seen.append((socket.inet_ntoa(frame[30:34]), int.from_bytes(frame[36:38], "big")))
        pos += 16 + caplen
    assert seen == [("239.1.2.3", 7148), ("10.0.0.1", 7149)] * 3


# ---------------------------------------------------------------------------
# Bad arguments: exit code 2 and a message saying what is wrong

@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "give at least one HOST:PORT destination, or --pcap FILE"),
        (["127.0.0.1"], "is not HOST:PORT"),
        (["127.0.0.1:http"], "is not a number"),
        (["127.0.0.1:0"], "port must be between 1 and 65535"),
        (["127.0.0.1:8888", "--packet", "40"], "--packet 40 is too small"),
        (["127.0.0.1:8888", "--packet", "70000"], "--packet 70000 is too large"),
        (["127.0.0.1:8888", "--addr-bits", "12"], "heap address bits must be a multiple of 8"),
        (["127.0.0.1:8888", "--addr-bits", "64"], "heap address bits must be a multiple of 8"),
        (["127.0.0.1:8888", "--flavour", "32-16"], "only 64-bit item pointers"),
        (["127.0.0.1:8888", "--flavour", "fast"], "is not a flavour"),
        (["127.0.0.1:8888", "--addr-bits", "40", "--flavour", "64-40"], "not allowed with argument"),
        (["127.0.0.1:8888", "--heaps", "-5"], "--heaps must be -1"),
        (["127.0.0.1:8888", "--heap-size", "0"], "is not positive"),
        (["127.0.0.1:8888", "--channels", "0"], "is not positive"),
        (["127.0.0.1:8888", "--rate", "-1"], "is not a finite non-negative number"),
        (["127.0.0.1:8888", "--ttl", "300"], "--ttl must be between 0 and 255"),
        (["--pcap", "x.pcap", "--ttl", "3"], "do not apply to --pcap"),
        (["--pcap", "x.pcap", "--tcp"], "do not apply to --pcap"),
        (["--pcap", "x.pcap", "[::1]:8888"], "IPv4 frames"),
        (["--tcp", "127.0.0.1:8888", "127.0.0.1:8889"], "--tcp sends to exactly one HOST:PORT"),
        (["--tcp", "127.0.0.1:8888", "--ttl", "2"], "apply to UDP only, not to --tcp"),
        (["127.0.0.1:8888", "--connect-timeout", "1"], "--connect-timeout applies to --tcp only"),
        (["127.0.0.1:8888", "--ttl", "2"], "endpoint is not a multicast address"),
        (["127.0.0.1:8888", "--rate-method", "fast"], "is not a rate method"),
        (["127.0.0.1:8888", "--group-size", "2"], "--group-size needs --group-mode"),
        (["127.0.0.1:8888", "--group-mode", "serial", "--group-size", "5", "--max-heaps", "4"],
         "--group-size 5 is more than --max-heaps 4"),
        (["127.0.0.1:8888", "--burst-rate-ratio", "0.5"], "--burst-rate-ratio must be at least 1"),
        (["[::1]:8888", "127.0.0.1:8889"], "Endpoint does not match protocol of the socket"),
        (["127.0.0.1:8888", "--addr-bits", "8", "--heap-size", "100", "--channel-step", "100"],
         "do not fit in 8 bits"),
        (["127.0.0.1:8888", "--addr-bits", "8", "--heap-size", "300"], "does not fit in 8 heap address bits"),
        (["nonexistent.invalid:8888"], "cannot send to nonexistent.invalid:8888"),
        (["127.0.0.1:8888", "--bind", "nonexistent.invalid"], "cannot send to 127.0.0.1:8888"),
        (["--pcap", "/nonexistent-directory/x.pcap"], "cannot send to /nonexistent-directory/x.pcap"),
    ],
)
def test_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as excinfo:
        send_tool.main(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "spead2_send: error:" in err
    assert message in err


def test_bad_arguments_subprocess():
    proc = run_tool("--packet", "20", "127.0.0.1:8888")
    assert proc.returncode == 2
    assert "usage: spead2_send" in proc.stderr
    assert "--packet 20 is too small" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_tool("nonexistent.invalid:9000", "--heaps", "1")
    assert proc.returncode == 2
    assert "cannot send to nonexistent.invalid:9000" in proc.stderr
    assert "Traceback" not in proc.stderr
