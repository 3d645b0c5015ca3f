"""The sender's pacing, end to end through the Python API, on a manual clock.

No real time is measured here (a rate checked against the wall clock flakes on
a shared machine).  Each stream is given ``spead2.send._ManualClock``: time
moves only when the pacer sleeps on it (straight to the deadline) or when a
test advances it, so the schedule a stream keeps is exact.  PcapFileStream
stamps its records with that clock, which lets these tests read every
packet's send time back from the file.

What the real clock adds (oversleep, its compensation, timer slack) is
measured, not asserted: ``python -m spead2.tools.bench.send --accuracy`` (see
doc/benchmarking.rst).  The arithmetic of the pacer alone is also checked in
C++ (tests/cpp/test_send_pacer.cpp).
"""

import socket
import struct

import numpy as np
import pytest

import spead2
import spead2.send

#: 200 Mb/s, in bytes per second.
RATE = 200e6 / 8
#: The stream's default burst (StreamConfig.burst_size).
BURST = spead2.send.StreamConfig().burst_size
MAX_PACKET = spead2.send.StreamConfig().max_packet_size


def _heap(heap_size, value=1):
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(4, 64, 48, 0))
    ig.add_item(0x1600, "timestamp", "", shape=(), format=[("u", 48)], value=value)
    ig.add_item(0x3300, "data", "", shape=(heap_size,), dtype=np.uint8, value=np.ones(heap_size, np.uint8))
    return ig.get_heap(descriptors="none", data="all")


def _pcap_records(path):
    """(timestamp in seconds, SPEAD packet bytes) per record of a pcap file
    written by PcapFileStream (Ethernet + IPv4 + UDP headers: 42 bytes)."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    scale = 1e-9 if magic == 0xA1B23C4D else 1e-6
    out = []
    pos = 24
    while pos < len(data):
        sec, frac, incl, _orig = struct.unpack_from("<IIII", data, pos)
        out.append((sec + frac * scale, incl - 42))
        pos += 16 + incl
    return out


def _paced_pcap(tmp_path, clock, sends, rate=RATE, name="paced.pcap", **config):
    """Open a PcapFileStream on `clock`, run `sends(stream)`, return its records."""
    path = tmp_path / name
    stream = spead2.send.PcapFileStream(spead2.ThreadPool(), str(path), [("127.0.0.1", 8888)],
                                        spead2.send.StreamConfig(rate=rate, **config))
    stream._set_clock(clock)
    sends(stream)
    del stream
    return _pcap_records(path)


def _check_schedule(records, start, rate, burst=BURST):
    """Every packet goes out no earlier than the bytes before it are due at
    `rate`, and no later than that less one burst (plus a packet: a burst
    closes on the packet that fills it): the pacer sleeps only between bursts."""
    sent = 0
    for i, (t, size) in enumerate(records):
        # Records of one batch are 1 ns apart: far below the 1 µs tolerance.
        elapsed = t - start
        due = sent / rate
        assert elapsed <= due + 1e-6, f"packet {i} at {elapsed:.9f} s, due at {due:.9f} s: late"
        assert elapsed >= (sent - burst - MAX_PACKET) / rate - 1e-6, \
            f"packet {i} at {elapsed:.9f} s, {sent} bytes before it: early"
        sent += size
    return sent


@pytest.mark.parametrize("heap_size", [1024, 8192, 65536])
def test_pcap_schedule(tmp_path, heap_size):
    """About a second of traffic at 200 Mb/s: the last burst ends exactly when
    its bytes are due, and every packet is on schedule."""
    clock = spead2.send._ManualClock(start=1000.0)
    heap = _heap(heap_size)
    n = int(RATE / heap_size)

    def sends(stream):
        for _ in range(n):
            stream.send_heap(heap)

    records = _paced_pcap(tmp_path, clock, sends)
    total = _check_schedule(records, 1000.0, RATE)
    elapsed = clock.now - 1000.0
    # The clock stops at the end of the last complete burst: the bytes after
    # it (less than a burst and a packet) were not waited for.
    assert total - BURST - MAX_PACKET <= elapsed * RATE <= total + 1
    assert abs(elapsed * RATE / total - 1) < 0.01
    assert clock.sleeps >= total // (BURST + MAX_PACKET)


@pytest.mark.parametrize("make", ["udp", "bytes"])
def test_rate_counts_spead_bytes(make):
    """The rate counts SPEAD packet bytes (what send_heap returns), not the
    UDP/IP headers, on every kind of stream."""
    clock = spead2.send._ManualClock()
    config = spead2.send.StreamConfig(rate=RATE)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    try:
        if make == "udp":
            stream = spead2.send.UdpStream(spead2.ThreadPool(), [rx.getsockname()], config)
        else:
            stream = spead2.send.BytesStream(spead2.ThreadPool(), config)
        stream._set_clock(clock)
        heap = _heap(8192)
        total = sum(stream.send_heap(heap) for _ in range(3000))
    finally:
        rx.close()
    assert total - BURST - MAX_PACKET <= clock.now * RATE <= total + 1


def test_unpaced_never_sleeps():
    """Without a rate nothing waits, however much is sent."""
    clock = spead2.send._ManualClock()
    stream = spead2.send.BytesStream(spead2.ThreadPool())
    stream._set_clock(clock)
    heap = _heap(65536)
    for _ in range(200):
        stream.send_heap(heap)
    assert clock.sleeps == 0
    assert clock.now == 0.0


def test_per_heap_rate(tmp_path):
    """A HeapReference's rate overrides the stream's; rate=0 sends that heap unpaced."""
    clock = spead2.send._ManualClock()
    heap = _heap(65536)
    refs = [spead2.send.HeapReference(heap, rate=RATE / 4) for _ in range(4)]

    def sends(stream):
        for _ in range(10):
            stream.send_heaps(refs, spead2.send.GroupMode.SERIAL)

    records = _paced_pcap(tmp_path, clock, sends, rate=RATE)
    total = _check_schedule(records, 0.0, RATE / 4)
    assert total - BURST - MAX_PACKET <= clock.now * RATE / 4 <= total + 1

    clock2 = spead2.send._ManualClock()
    unpaced = [spead2.send.HeapReference(heap, rate=0.0) for _ in range(4)]
    _paced_pcap(tmp_path, clock2, lambda s: [s.send_heaps(unpaced, spead2.send.GroupMode.SERIAL) for _ in range(10)],
                rate=RATE, name="unpaced.pcap")
    assert clock2.sleeps == 0


def test_catch_up_at_burst_rate(tmp_path):
    """A sender that falls behind (here: the clock jumps 20 ms between heaps)
    makes up the lag no faster than rate × burst_rate_ratio, then returns to
    the plain rate, ending on the original schedule."""
    ratio = 1.25
    clock = spead2.send._ManualClock()
    heap = _heap(65536)
    lag = 0.020

    def sends(stream):
        stream.send_heap(heap)
        clock.advance(lag)
        for _ in range(60):
            stream.send_heap(heap)

    records = _paced_pcap(tmp_path, clock, sends, burst_rate_ratio=ratio)
    first_heap = sum(size for _, size in records[:len(records) // 61])
    total = sum(size for _, size in records)
    # Bursts after the jump are spaced at the burst rate while behind ...
    starts = []
    sent = 0
    for t, size in records:
        if sent >= first_heap and (not starts or t - starts[-1][0] > 1e-6):
            starts.append((t, sent))
        sent += size
    gaps = [(t1 - t0, b1 - b0) for (t0, b0), (t1, b1) in zip(starts, starts[1:])]
    fastest = min(g / (b / RATE) for g, b in gaps)
    assert fastest == pytest.approx(1 / ratio, rel=0.02)
    # ... never faster, and by the end the schedule is the original one: the lag is made up.
    assert all(g / (b / RATE) >= 1 / ratio - 0.02 for g, b in gaps)
    assert total - BURST - MAX_PACKET <= clock.now * RATE <= total + 1


def test_idle_sender_restarts_schedule(tmp_path):
    """After a long pause (more than 100 ms behind) the schedule restarts from
    now: no burst of catch-up traffic."""
    clock = spead2.send._ManualClock()
    heap = _heap(65536)
    pause = 5.0

    def sends(stream):
        for _ in range(10):
            stream.send_heap(heap)
        clock.advance(pause)
        for _ in range(10):
            stream.send_heap(heap)

    records = _paced_pcap(tmp_path, clock, sends)
    half = len(records) // 2
    after = records[half:]
    restart = after[0][0]
    assert restart >= pause
    _check_schedule(after, restart, RATE)


def test_manual_clock_only_moves_forward():
    clock = spead2.send._ManualClock(start=2.5)
    clock.advance(0.5)
    assert clock.now == pytest.approx(3.0)
    assert clock.now_ns == 3_000_000_000
    with pytest.raises(ValueError):
        clock.advance(-1.0)


def test_set_clock_none_restores_real_clock():
    """Back on the real clock, an unpaced stream still sends (and the manual
    clock is no longer consulted)."""
    clock = spead2.send._ManualClock()
    stream = spead2.send.BytesStream(spead2.ThreadPool(), spead2.send.StreamConfig(rate=1e12))
    stream._set_clock(clock)
    stream.send_heap(_heap(1024))
    stream._set_clock(None)
    before = clock.sleeps
    for _ in range(100):
        stream.send_heap(_heap(65536))
    assert clock.sleeps == before
    assert len(stream.getvalue()) > 100 * 65536
