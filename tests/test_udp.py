"""Kernel UDP receive transport: ``ChunkRingStream.add_udp_reader``.

What is covered:

* the class constants and every overload (port + bind_hostname, IPv4
  multicast + interface_address, IPv6 multicast + interface_index, adopting
  a socket), with the errors for bad names and addresses;
* several readers on one stream, ``explicit_start``;
* unicast on loopback (IPv4 and IPv6), with our UDP sender and with raw
  datagrams;
* UDP GRO: that the kernel really coalesces (a raw ``recvmsg`` on a socket
  with ``UDP_GRO`` sees one buffer holding several segments), and that our
  reader splits coalesced buffers back into packets (``max_batch`` larger
  than the 64 datagrams one ``recvmmsg`` can return is only possible with
  coalescing), from our GSO sender and from a hand-made ``UDP_SEGMENT`` send;
* oversize datagrams (plain and inside a coalesced buffer) and malformed
  datagrams: dropped and counted in ``malformed_packets``;
* the socket-buffer warning that names ``net.core.rmem_max``;
* stopping while traffic flows (also while the worker is blocked waiting for
  a free chunk);
* the chunks received over UDP are identical to those from replaying the
  same traffic from a pcap file written by our ``PcapFileStream``;
* IPv4 and IPv6 multicast between two network namespaces joined by a veth
  pair (skipped, with the reason, where namespaces cannot be made).

The heap layout is the one of ``spead_builder`` / ``conftest.place_plain``:
1 KiB heaps, ten per chunk.  Heaps made by hand carry their position in item
0x1000; heaps from our sender (which cannot make that item immediate) carry
it as the heap counter, and the stream reads ``HEAP_CNT`` instead.
"""

import json
import logging
import os
import pathlib
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import spead2
import spead2.recv
import spead2.send

pytest.importorskip("numba")
pytest.importorskip("scipy")

from spead_builder import (  # noqa: E402
    CHUNK_PAYLOAD_SIZE,
    HEAP_PAYLOAD_SIZE,
    HEAPS_PER_CHUNK,
    MALFORMED_KINDS,
    POSITION_ID,
    descriptor_heap,
    heap_payload,
    malformed_packet,
    position_heap,
    stop_heap,
)

pytestmark = pytest.mark.timeout(60)

TESTS_DIR = pathlib.Path(__file__).resolve().parent
UDP_SEGMENT = 103  # <linux/udp.h>
UDP_GRO = 104
#: Messages one recvmmsg call returns when GRO is on (the reader's
#: UDP_GRO_MMSG_COUNT): more packets than this in one batch prove coalescing.
MMSG_COUNT = 16
#: Items for heaps made by hand (position in item 0x1000) ...
POSITION_ITEMS = [POSITION_ID, spead2.HEAP_LENGTH_ID]
#: ... and for heaps from our sender (position = heap counter).
CNT_ITEMS = [spead2.HEAP_CNT_ID, spead2.HEAP_LENGTH_ID]
#: Heap counter of the stop heap sent after our sender's data heaps.
END_CNT = 1 << 30


# ---------------------------------------------------------------------------
# Helpers


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A UDP port that was free a moment ago."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bound_socket(family=socket.AF_INET, host="127.0.0.1", gro=False, rcvbuf=4 << 20):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if gro:
        try:
            s.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        except OSError as exc:
            s.close()
            pytest.skip(f"the kernel does not offer UDP_GRO: {exc}")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((host, 0))
    return s


class Receiver:
    """A ChunkRingStream in the standard layout, plus a collector."""

    def __init__(self, place, items=POSITION_ITEMS, *, max_chunks=4, n_chunks=None, explicit_start=False,
                 max_heaps=8, data_ring=None, thread_pool=None):
        self.thread_pool = thread_pool or spead2.ThreadPool()
        config = spead2.recv.StreamConfig(max_heaps=max_heaps, explicit_start=explicit_start)
        chunk_config = spead2.recv.ChunkStreamConfig(items=items, max_chunks=max_chunks, place=place)
        if n_chunks is None:
            n_chunks = 2 * max_chunks + 2
        self.stream = spead2.recv.ChunkRingStream(
            self.thread_pool, config, chunk_config,
            spead2.recv.ChunkRingbuffer(data_ring or max_chunks),
            spead2.recv.ChunkRingbuffer(n_chunks),
        )
        for _ in range(n_chunks):
            self.stream.add_free_chunk(spead2.recv.Chunk(
                present=np.zeros(HEAPS_PER_CHUNK, np.uint8), data=np.zeros(CHUNK_PAYLOAD_SIZE, np.uint8)))

    def collect(self, timeout=10.0):
        """Chunks until the stream stops: ``{chunk_id: (present, data)}``.

        If the stream has not stopped after `timeout` seconds it is stopped
        (and what arrived is still returned); ``self.timed_out`` says so.
        """
        ring = self.stream.data_ringbuffer
        deadline = time.monotonic() + timeout
        self.timed_out = False
        chunks = {}
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not self.timed_out:
                self.timed_out = True
                self.stream.stop()
            select.select([ring.data_fd], [], [], 0.2 if self.timed_out else min(remaining, 0.2))
            try:
                chunk = ring.get_nowait()
            except spead2.Empty:
                continue
            except spead2.Stopped:
                break
            assert chunk.chunk_id not in chunks, f"chunk {chunk.chunk_id} delivered twice"
            chunks[chunk.chunk_id] = (chunk.present.copy(), chunk.data.copy())
            self.stream.add_free_chunk(chunk)
        return chunks


def expected_chunks(positions):
    """What the chunks hold after the heaps at `positions` arrived intact."""
    out = {}
    for pos in positions:
        chunk_id, index = divmod(pos, HEAPS_PER_CHUNK)
        if chunk_id not in out:
            out[chunk_id] = (np.zeros(HEAPS_PER_CHUNK, np.uint8), np.zeros(CHUNK_PAYLOAD_SIZE, np.uint8))
        present, data = out[chunk_id]
        present[index] = 1
        data[index * HEAP_PAYLOAD_SIZE:(index + 1) * HEAP_PAYLOAD_SIZE] = np.frombuffer(heap_payload(pos), np.uint8)
    return out


def assert_chunks_equal(actual, expected):
    """`actual` holds what `expected` says; it may also hold empty chunks
    (the window back-fills chunk IDs that got no heap, as the reference does)."""
    actual = {k: v for k, v in actual.items() if k in expected or v[0].any()}
    assert sorted(actual) == sorted(expected)
    for chunk_id, (present, data) in expected.items():
        got_present, got_data = actual[chunk_id]
        np.testing.assert_array_equal(got_present, present, err_msg=f"presence of chunk {chunk_id}")
        for index in np.flatnonzero(present):
            span = slice(index * HEAP_PAYLOAD_SIZE, (index + 1) * HEAP_PAYLOAD_SIZE)
            np.testing.assert_array_equal(got_data[span], data[span], err_msg=f"chunk {chunk_id} heap {index}")


def raw_packets(positions, packet_size=HEAP_PAYLOAD_SIZE // 2):
    """Hand-made packets (position in item 0x1000) for the heaps at `positions`."""
    out = []
    for pos in positions:
        out.extend(position_heap(pos, heap_cnt=pos + 1, packet_size=packet_size))
    return out


def send_raw(packets, address, family=socket.AF_INET, pace_every=200):
    """Send datagrams from a plain socket (with a pause now and then so a
    4 MiB socket buffer cannot overflow on a slow machine)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        for i, p in enumerate(packets):
            s.sendto(p, address)
            if pace_every and i % pace_every == pace_every - 1:
                time.sleep(0.002)


def make_sender(endpoints, max_packet_size=600, rate=0.0, thread_pool=None, **kwargs):
    config = spead2.send.StreamConfig(max_packet_size=max_packet_size, rate=rate, max_heaps=16)
    return spead2.send.UdpStream(thread_pool or spead2.ThreadPool(), endpoints, config, **kwargs)


def sender_heaps(positions):
    """(heap, cnt) pairs for our sender: the position travels as the heap counter."""
    ig = spead2.send.ItemGroup()
    ig.add_item(0x3000, "payload", "heap payload", shape=(HEAP_PAYLOAD_SIZE,), dtype=np.uint8)
    for pos in positions:
        ig["payload"].value = np.frombuffer(heap_payload(pos), np.uint8)
        yield ig.get_heap(descriptors="none", data="all"), pos
    yield ig.get_end(), END_CNT


def send_with_stream(stream, positions):
    for heap, cnt in sender_heaps(positions):
        stream.send_heap(heap, cnt=cnt)
    stream.flush()


class LogCapture(logging.Handler):
    """Collects the records of the ``spead2`` logger (delivered from a
    background thread, so tests wait for them)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []
        self._cond = threading.Condition()

    def emit(self, record):
        with self._cond:
            self.messages.append(record.getMessage())
            self._cond.notify_all()

    def wait_for(self, text, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in m for m in self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True


@pytest.fixture
def spead2_log():
    logger = logging.getLogger("spead2")
    handler = LogCapture()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


# ---------------------------------------------------------------------------
# Constants and overloads


def test_constants():
    cls = spead2.recv.ChunkRingStream
    assert cls.DEFAULT_UDP_MAX_SIZE == 9200
    assert cls.DEFAULT_UDP_BUFFER_SIZE == 8 * 1024 * 1024


def test_overload_defaults_in_signature():
    doc = spead2.recv.ChunkRingStream.add_udp_reader.__doc__
    assert "bind_hostname: str = ''" in doc
    assert "interface_address: str = '0.0.0.0'" in doc
    assert "interface_index" in doc
    assert "max_size" in doc and "9200" in doc and "8388608" in doc


def test_unicast_loopback(place_plain_llc):
    positions = range(10, 60)
    rx = Receiver(place_plain_llc)
    port = free_port()
    rx.stream.add_udp_reader(port, bind_hostname="127.0.0.1")
    send_raw(raw_packets(positions) + [stop_heap(10_000)], ("127.0.0.1", port))
    chunks = rx.collect()
    assert not rx.timed_out
    assert_chunks_equal(chunks, expected_chunks(positions))
    stats = rx.stream.stats
    assert stats["packets"] == 2 * len(positions) + 1
    assert stats["heaps"] == len(positions)
    assert stats["rejected_heaps"] == 1  # the stop heap (no position item)
    assert stats["malformed_packets"] == 0


def test_unicast_keyword_arguments(place_plain_llc):
    positions = range(0, 10)
    rx = Receiver(place_plain_llc)
    port = free_port()
    rx.stream.add_udp_reader(port=port, max_size=2000, buffer_size=1 << 20, bind_hostname="localhost")
    # The reader binds the first address "localhost" resolves to: ::1 on a
    # stock Debian /etc/hosts, 127.0.0.1 where only that is listed.
    family, _, _, _, address = socket.getaddrinfo("localhost", port, type=socket.SOCK_DGRAM)[0]
    send_raw(raw_packets(positions) + [stop_heap(100)], address[:2], family)
    assert_chunks_equal(rx.collect(), expected_chunks(positions))


def test_unicast_ipv6_loopback(place_plain_llc):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        port = free_port(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    positions = range(20, 40)
    rx = Receiver(place_plain_llc)
    rx.stream.add_udp_reader(port, bind_hostname="::1")
    send_raw(raw_packets(positions) + [stop_heap(100)], ("::1", port), socket.AF_INET6)
    assert_chunks_equal(rx.collect(), expected_chunks(positions))


def test_our_sender_to_loopback(place_plain_llc):
    """Our UdpStream (GSO where available) to our reader, heap counter placement."""
    positions = range(1, 200)
    rx = Receiver(place_plain_llc, CNT_ITEMS)
    port = free_port()
    rx.stream.add_udp_reader(port, bind_hostname="127.0.0.1")
    tx = make_sender([("127.0.0.1", port)], rate=50e6)
    send_with_stream(tx, positions)
    chunks = rx.collect()
    assert not rx.timed_out
    assert_chunks_equal(chunks, expected_chunks(positions))
    stats = rx.stream.stats
    assert stats["heaps"] == len(positions)
    assert stats["rejected_heaps"] == 1
    assert stats["incomplete_heaps_evicted"] == 0
    assert stats["malformed_packets"] == 0


def test_adopt_socket(place_plain_llc):
    positions = range(0, 30)
    rx = Receiver(place_plain_llc)
    sock = bound_socket()
    address = sock.getsockname()
    rx.stream.add_udp_reader(sock, max_size=2000)
    # The stream holds a duplicate: closing ours must not matter.
    sock.close()
    send_raw(raw_packets(positions) + [stop_heap(100)], address)
    assert_chunks_equal(rx.collect(), expected_chunks(positions))


def test_adopt_socket_positional_max_size(place_plain_llc):
    rx = Receiver(place_plain_llc)
    with bound_socket() as sock:
        rx.stream.add_udp_reader(sock, 100)  # max_size=100: every packet below is too big
        send_raw(raw_packets([0]) + [stop_heap(100)], sock.getsockname())
    chunks = rx.collect(timeout=2.0)
    assert chunks == {}
    assert rx.stream.stats["malformed_packets"] == 2  # the stop heap is small enough


@pytest.mark.parametrize(
    "family, kind",
    [(socket.AF_INET, socket.SOCK_STREAM), (socket.AF_UNIX, socket.SOCK_DGRAM)],
    ids=["tcp", "unix-datagram"],
)
def test_adopt_socket_wrong_kind(place_plain_llc, family, kind):
    rx = Receiver(place_plain_llc)
    with socket.socket(family, kind) as sock:
        with pytest.raises((TypeError, ValueError)):
            rx.stream.add_udp_reader(sock)
    rx.stream.stop()


def test_adopt_not_a_socket(place_plain_llc):
    rx = Receiver(place_plain_llc)
    with pytest.raises(TypeError):
        rx.stream.add_udp_reader("not a socket")
    with open(os.devnull, "rb") as f, pytest.raises((TypeError, ValueError, RuntimeError)):
        rx.stream.add_udp_reader(f)
    rx.stream.stop()


def test_several_readers(place_plain_llc):
    """Two sockets on one stream (one by port, one adopted); the stop heap
    arrives last, through the second."""
    rx = Receiver(place_plain_llc, max_heaps=16)
    port1 = free_port()
    rx.stream.add_udp_reader(port1, bind_hostname="127.0.0.1")
    sock2 = bound_socket()
    rx.stream.add_udp_reader(sock2)
    even = [p for p in range(0, 40) if p % 2 == 0]
    odd = [p for p in range(0, 40) if p % 2 == 1]
    send_raw(raw_packets(even), ("127.0.0.1", port1))
    send_raw(raw_packets(odd), sock2.getsockname())
    # Let both sockets drain before the stop heap, so nothing is cut off.
    deadline = time.monotonic() + 10
    while rx.stream.stats["packets"] < 80 and time.monotonic() < deadline:
        time.sleep(0.01)
    send_raw([stop_heap(1000)], sock2.getsockname())
    chunks = rx.collect()
    sock2.close()
    assert_chunks_equal(chunks, expected_chunks(range(0, 40)))


def test_explicit_start(place_plain_llc):
    rx = Receiver(place_plain_llc, explicit_start=True)
    sock = bound_socket()
    rx.stream.add_udp_reader(sock)
    # Before start() nothing is processed (datagrams wait in the socket).
    send_raw([descriptor_heap(5)], sock.getsockname())
    time.sleep(0.2)
    assert rx.stream.stats["packets"] == 0
    rx.stream.start()
    positions = range(0, 20)
    send_raw(raw_packets(positions) + [stop_heap(100)], sock.getsockname())
    chunks = rx.collect()
    sock.close()
    assert_chunks_equal(chunks, expected_chunks(positions))


def test_reader_after_stop_is_ignored(place_plain_llc):
    rx = Receiver(place_plain_llc)
    rx.stream.stop()
    rx.stream.add_udp_reader(free_port(), bind_hostname="127.0.0.1")  # no error, as in the reference
    assert rx.collect(timeout=1.0) == {}


# ---------------------------------------------------------------------------
# Errors for bad names and addresses


BAD_HOST = "no-such-host.invalid"


def test_bad_bind_hostname(place_plain_llc):
    rx = Receiver(place_plain_llc)
    with pytest.raises((RuntimeError, ValueError), match="(?i)host not found"):
        rx.stream.add_udp_reader(free_port(), bind_hostname=BAD_HOST)


def test_bad_multicast_group_name(place_plain_llc):
    rx = Receiver(place_plain_llc)
    with pytest.raises((RuntimeError, ValueError), match="(?i)host not found"):
        rx.stream.add_udp_reader(BAD_HOST, free_port(), interface_address="127.0.0.1")
    with pytest.raises((RuntimeError, ValueError), match="(?i)host not found"):
        rx.stream.add_udp_reader(BAD_HOST, free_port(), interface_index=0)


def test_bad_hostname_exception_type_as_reference(place_plain_llc):
    rx = Receiver(place_plain_llc)
    with pytest.raises(RuntimeError):
        rx.stream.add_udp_reader(free_port(), bind_hostname=BAD_HOST)


def test_bind_address_not_local(place_plain_llc):
    rx = Receiver(place_plain_llc)
    # TEST-NET-1 (RFC 5737): never a local address.
    with pytest.raises(RuntimeError, match="(?i)assign"):
        rx.stream.add_udp_reader(free_port(), buffer_size=0, bind_hostname="192.0.2.1")


def test_port_in_use(place_plain_llc):
    rx = Receiver(place_plain_llc)
    with bound_socket() as sock:
        with pytest.raises(RuntimeError, match="(?i)in use"):
            rx.stream.add_udp_reader(sock.getsockname()[1], buffer_size=0, bind_hostname="127.0.0.1")


def test_ipv4_interface_address_not_local(place_plain_llc):
    rx = Receiver(place_plain_llc)
    with pytest.raises(RuntimeError, match="(?i)no such device"):
        rx.stream.add_udp_reader("239.255.10.1", free_port(), buffer_size=0, interface_address="192.0.2.1")


def test_ipv4_interface_address_bad(place_plain_llc):
    rx = Receiver(place_plain_llc)
    with pytest.raises((RuntimeError, ValueError)):
        rx.stream.add_udp_reader("239.255.10.1", free_port(), interface_address=BAD_HOST)
    with pytest.raises(ValueError):
        rx.stream.add_udp_reader("239.255.10.1", free_port(), interface_address="::1")


def test_ipv4_overload_rejects_ipv6_group(place_plain_llc):
    rx = Receiver(place_plain_llc)
    with pytest.raises(ValueError):
        rx.stream.add_udp_reader("ff14::1234", free_port(), interface_address="127.0.0.1")


def test_ipv4_overload_unicast_endpoint_as_reference(place_plain_llc):
    rx = Receiver(place_plain_llc)
    rx.stream.add_udp_reader("127.0.0.1", free_port(), buffer_size=0, interface_address="127.0.0.1")
    rx.stream.add_udp_reader("0.0.0.0", free_port(), buffer_size=0, interface_address="127.0.0.1")
    with pytest.raises(ValueError):
        rx.stream.add_udp_reader("127.0.0.1", free_port(), buffer_size=0, interface_address="0.0.0.0")


def test_ipv6_overload_rejects_non_multicast(place_plain_llc):
    rx = Receiver(place_plain_llc)
    with pytest.raises(ValueError, match="(?i)multicast"):
        rx.stream.add_udp_reader("::1", free_port(), interface_index=0)
    with pytest.raises(ValueError):
        rx.stream.add_udp_reader("239.255.10.1", free_port(), interface_index=0)


def test_ipv6_unknown_interface_index(place_plain_llc):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    rx = Receiver(place_plain_llc)
    with pytest.raises(RuntimeError, match="(?i)no such device"):
        rx.stream.add_udp_reader("ff14::1234", free_port(), buffer_size=0, interface_index=0x7FFF0000)


def test_port_out_of_range(place_plain_llc):
    rx = Receiver(place_plain_llc)
    with pytest.raises(TypeError):
        rx.stream.add_udp_reader(70000)


# ---------------------------------------------------------------------------
# Socket buffer


def _rmem_max():
    try:
        return int(pathlib.Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        pytest.skip("cannot read net.core.rmem_max")


def _has_cap_net_admin():
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 12))  # CAP_NET_ADMIN
    return False


def _socket_rcvbuf(port):
    """The receive buffer (``rb`` of ``ss -m``, in bytes) of the UDP socket bound to `port`."""
    out = subprocess.run(["ss", "-uanmH", f"sport = :{port}"], capture_output=True, text=True).stdout
    m = re.search(r"\brb(\d+)", out)
    assert m, out
    return int(m.group(1))


CLIPPED_SCRIPT = r"""
import logging, sys
import spead2, spead2.recv
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
port, size = int(sys.argv[1]), int(sys.argv[2])
stream = spead2.recv.Stream(spead2.ThreadPool())
stream.add_udp_reader(port, buffer_size=size, bind_hostname="127.0.0.1")
stream.stop()
"""


def test_buffer_beyond_rmem_max_forced(place_plain_llc, spead2_log):
    """With CAP_NET_ADMIN the reader gets the buffer it asked for beyond
    net.core.rmem_max (SO_RCVBUFFORCE), and says so at INFO, not WARNING."""
    rmem_max = _rmem_max()
    if rmem_max >= 1 << 29:
        pytest.skip(f"net.core.rmem_max is {rmem_max}: too large to exceed")
    if not _has_cap_net_admin():
        pytest.skip("needs CAP_NET_ADMIN")
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2)")
    rx = Receiver(place_plain_llc)
    port = free_port()
    want = rmem_max + (4 << 20)
    rx.stream.add_udp_reader(port, buffer_size=want, bind_hostname="127.0.0.1")
    try:
        assert _socket_rcvbuf(port) >= want
        assert spead2_log.wait_for("SO_RCVBUFFORCE"), spead2_log.messages
        assert not any("rmem_max" in m and "clipped" in m for m in spead2_log.messages)
    finally:
        rx.stream.stop()


def test_buffer_clipped_warning(tmp_path):
    """Without CAP_NET_ADMIN (dropped with setpriv when this test runs with
    it) the buffer is clipped and the warning names net.core.rmem_max."""
    rmem_max = _rmem_max()
    if rmem_max >= 1 << 29:
        pytest.skip(f"net.core.rmem_max is {rmem_max}: too large to exceed")
    cmd = [sys.executable, "-c", CLIPPED_SCRIPT, str(free_port()), str(rmem_max + (1 << 20))]
    if _has_cap_net_admin():
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv (util-linux) to drop CAP_NET_ADMIN")
        cmd = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "WARNING" in out.stdout and "net.core.rmem_max" in out.stdout, out.stdout + out.stderr
    assert "SO_RCVBUFFORCE" not in out.stdout


def test_buffer_within_limit_no_warning(place_plain_llc, spead2_log):
    rmem_max = _rmem_max()
    rx = Receiver(place_plain_llc)
    rx.stream.add_udp_reader(free_port(), buffer_size=min(rmem_max, 1 << 20), bind_hostname="127.0.0.1")
    rx.stream.add_udp_reader(free_port(), buffer_size=0, bind_hostname="127.0.0.1")
    rx.stream.stop()
    assert not spead2_log.wait_for("rmem_max", timeout=0.5), spead2_log.messages


# ---------------------------------------------------------------------------
# Oversize and malformed datagrams


def test_max_size_boundary(place_plain_llc):
    """A datagram of exactly max_size bytes is accepted, one byte more is not."""
    good = raw_packets([0])  # two packets of equal size
    size = len(good[0])
    rx = Receiver(place_plain_llc)
    sock = bound_socket()
    rx.stream.add_udp_reader(sock, max_size=size)
    too_big = position_heap(1, 2, packet_size=HEAP_PAYLOAD_SIZE // 2 + 1)  # 513 + 511 bytes of payload
    assert len(too_big[0]) == size + 1 and len(too_big[1]) < size
    send_raw(good + too_big + [stop_heap(100)], sock.getsockname())
    chunks = rx.collect()
    sock.close()
    present, _ = chunks[0]
    assert present[0] == 1 and present[1] == 0
    stats = rx.stream.stats
    assert stats["malformed_packets"] == 1
    assert stats["packets"] == 4


def test_oversize_datagrams_counted(place_plain_llc):
    rx = Receiver(place_plain_llc)
    sock = bound_socket()
    rx.stream.add_udp_reader(sock, max_size=1500)
    junk = [b"\x53\x04\x02\x06" + bytes(n) for n in (1497, 4000, 9000, 20000)]
    positions = range(0, 10)
    send_raw(junk + raw_packets(positions) + [stop_heap(100)], sock.getsockname())
    chunks = rx.collect()
    sock.close()
    assert_chunks_equal(chunks, expected_chunks(positions))
    assert rx.stream.stats["malformed_packets"] == len(junk)


def test_malformed_datagrams_counted(place_plain_llc):
    rx = Receiver(place_plain_llc)
    sock = bound_socket()
    rx.stream.add_udp_reader(sock)
    positions = range(0, 10)
    bad = [malformed_packet(kind) for kind in MALFORMED_KINDS]
    send_raw(bad + raw_packets(positions) + [stop_heap(100)], sock.getsockname())
    chunks = rx.collect()
    sock.close()
    assert_chunks_equal(chunks, expected_chunks(positions))
    stats = rx.stream.stats
    assert stats["malformed_packets"] == len(bad)
    assert stats["packets"] == 2 * len(positions) + 1


# ---------------------------------------------------------------------------
# GRO


def _gso_send(sock, packets, address, segment_size):
    """One sendmsg with UDP_SEGMENT: the kernel keeps it as one GSO packet on
    loopback and, for a socket with UDP_GRO, delivers it coalesced."""
    sock.sendmsg([b"".join(packets)], [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("H", segment_size))], 0, address)


def _recv_coalesced(sock, limit=10_000):
    """(length, segment size or None) of every buffer queued on a UDP_GRO socket."""
    sock.setblocking(False)
    out = []
    for _ in range(limit):
        try:
            data, ancillary, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(4))
        except BlockingIOError:
            break
        seg = None
        for level, kind, value in ancillary:
            if level == socket.SOL_UDP and kind == UDP_GRO:
                seg = struct.unpack("i", value[:4])[0]
        out.append((data, seg))
    return out


def test_kernel_coalesces_our_gso_sender():
    """Proof that the GRO path is exercised on loopback: our GSO sender's
    multi-packet heaps reach a UDP_GRO socket as coalesced buffers."""
    rx = bound_socket(gro=True)
    tx = make_sender([rx.getsockname()], max_packet_size=600)
    if not tx.using_gso:
        pytest.skip("our sender does not use GSO here")
    positions = range(0, 20)
    send_with_stream(tx, positions)
    buffers = _recv_coalesced(rx)
    rx.close()
    coalesced = [(data, seg) for data, seg in buffers if seg is not None and len(data) > seg]
    assert coalesced, f"no coalesced buffers: {[(len(d), s) for d, s in buffers[:5]]}"
    # Split as our reader does, the segments are exactly the sender's packets.
    from spead_builder import parse_packet

    packets = []
    for data, seg in buffers:
        step = seg or len(data)
        packets.extend(data[i:i + step] for i in range(0, len(data), step))
    parsed = [parse_packet(p) for p in packets]
    assert all(p is not None for p in parsed)
    assert sorted({p.heap_cnt for p in parsed}) == [*positions, END_CNT]


def _preloaded_gro_socket(send):
    """A UDP_GRO socket into which `send(address)` has queued traffic before
    any reader looks at it; returns the socket."""
    sock = bound_socket(gro=True)
    send(sock.getsockname())
    return sock


def test_reader_splits_coalesced_from_our_sender(place_plain_llc):
    tx = make_sender([("127.0.0.1", 9)], max_packet_size=600)  # only to ask about GSO
    if not tx.using_gso:
        pytest.skip("our sender does not use GSO here")
    positions = range(0, 100)  # 100 heaps of 2 packets: 100 coalesced buffers of 2 segments

    def send(address):
        send_with_stream(make_sender([address], max_packet_size=600), positions)

    sock = _preloaded_gro_socket(send)
    rx = Receiver(place_plain_llc, CNT_ITEMS, max_heaps=4)
    rx.stream.add_udp_reader(sock)
    chunks = rx.collect()
    sock.close()
    assert_chunks_equal(chunks, expected_chunks(positions))
    stats = rx.stream.stats
    assert stats["packets"] == 2 * len(positions) + 1
    assert stats["malformed_packets"] == 0
    # One recvmmsg returns at most 64 buffers: more packets in one batch
    # means the reader received coalesced buffers and split them.
    assert stats["max_batch"] > MMSG_COUNT, dict(stats.items())


def test_reader_without_coalescing_for_contrast(place_plain_llc):
    """The same traffic queued before GRO was enabled arrives as separate
    datagrams: batches are then limited to one packet per message."""
    positions = range(0, 100)
    sock = bound_socket(gro=False)
    send_with_stream(make_sender([sock.getsockname()], max_packet_size=600), positions)
    rx = Receiver(place_plain_llc, CNT_ITEMS, max_heaps=4)
    rx.stream.add_udp_reader(sock)
    chunks = rx.collect()
    sock.close()
    assert_chunks_equal(chunks, expected_chunks(positions))
    assert rx.stream.stats["max_batch"] <= MMSG_COUNT


def test_reader_splits_udp_segment_send(place_plain_llc):
    """A hand-made UDP_SEGMENT send: 40 packets of 576 bytes in one GSO
    packet, then one whose last segment is short (ragged)."""
    packets = raw_packets(range(0, 20))
    seg = len(packets[0])
    assert all(len(p) == seg for p in packets)
    ragged = raw_packets([20]) + [raw_packets([21])[0][:100]]  # the last one is truncated: malformed

    def send(address):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                _gso_send(s, packets, address, seg)
                _gso_send(s, ragged, address, seg)
            except OSError as exc:
                pytest.skip(f"UDP_SEGMENT not available: {exc}")
            s.sendto(stop_heap(1000), address)

    sock = _preloaded_gro_socket(send)
    rx = Receiver(place_plain_llc)
    rx.stream.add_udp_reader(sock)
    chunks = rx.collect()
    sock.close()
    assert_chunks_equal(chunks, expected_chunks(range(0, 21)))
    stats = rx.stream.stats
    assert stats["packets"] == 40 + 2 + 1
    assert stats["malformed_packets"] == 1
    # All three buffers come back from one recvmmsg; malformed packets are
    # not counted in a batch.
    assert stats["max_batch"] == 40 + 2 + 1


def test_oversize_segments_in_coalesced_buffer(place_plain_llc):
    """max_size applies to each segment of a coalesced buffer."""
    packets = raw_packets(range(0, 5))
    seg = len(packets[0])

    def send(address):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                _gso_send(s, packets, address, seg)
            except OSError as exc:
                pytest.skip(f"UDP_SEGMENT not available: {exc}")
            s.sendto(stop_heap(1000), address)

    sock = _preloaded_gro_socket(send)
    rx = Receiver(place_plain_llc)
    rx.stream.add_udp_reader(sock, max_size=seg - 1)
    chunks = rx.collect()
    sock.close()
    assert chunks == {}
    assert rx.stream.stats["malformed_packets"] == len(packets)


# ---------------------------------------------------------------------------
# Stopping while traffic flows


class BackgroundSender(threading.Thread):
    """Sends heaps (rate-limited) to `address` until told to stop."""

    def __init__(self, address, rate=100e6):
        super().__init__(daemon=True)
        self.address = address
        self.rate = rate
        self.halt = threading.Event()
        self.sent = 0
        self.error = None

    def run(self):
        try:
            tx = make_sender([self.address], max_packet_size=600, rate=self.rate)
            ig = spead2.send.ItemGroup()
            ig.add_item(0x3000, "payload", "", shape=(HEAP_PAYLOAD_SIZE,), dtype=np.uint8)
            ig["payload"].value = np.zeros(HEAP_PAYLOAD_SIZE, np.uint8)
            heap = ig.get_heap(descriptors="none", data="all")
            cnt = 1
            while not self.halt.is_set():
                tx.send_heap(heap, cnt=cnt)
                cnt += 1
                self.sent += 1
        except Exception as exc:  # pragma: no cover - reported by the test
            self.error = exc


def stalled(stream, quiet=0.3):
    """True if the data ring is full, no free chunk is left and no packet was
    processed for `quiet` seconds."""
    if stream.data_ringbuffer.qsize() < stream.data_ringbuffer.maxsize or stream.free_ringbuffer.qsize():
        time.sleep(0.05)
        return False
    before = stream.stats["packets"]
    time.sleep(quiet)
    return stream.stats["packets"] == before


@pytest.mark.parametrize("consume", [True, False], ids=["consuming", "worker-blocked"])
def test_stop_while_traffic_flows(place_plain_llc, consume):
    rx = Receiver(place_plain_llc, CNT_ITEMS, max_chunks=2, n_chunks=3)
    port = free_port()
    rx.stream.add_udp_reader(port, bind_hostname="127.0.0.1")
    sender = BackgroundSender(("127.0.0.1", port))
    sender.start()
    try:
        ring = rx.stream.data_ringbuffer
        deadline = time.monotonic() + 10
        received = 0
        while time.monotonic() < deadline:
            if consume:
                select.select([ring.data_fd], [], [], 0.1)
                try:
                    chunk = ring.get_nowait()
                except spead2.Empty:
                    continue
                received += 1
                rx.stream.add_free_chunk(chunk)
                if received >= 20:
                    break
            else:
                # Nobody returns chunks: the worker ends up waiting for a free
                # one, and the stream stalls (packets stay in the socket).
                if stalled(rx.stream):
                    break
        if consume:
            assert received >= 20
        else:
            assert stalled(rx.stream), "the stream did not stall"
        start = time.monotonic()
        rx.stream.stop()
        assert time.monotonic() - start < 20  # only a hang takes this long
        # The ring ends: the chunks still in it, then Stopped.
        left = 0
        while True:
            try:
                ring.get_nowait()
                left += 1
            except spead2.Stopped:
                break
            except spead2.Empty:
                select.select([ring.data_fd], [], [], 0.1)
                assert time.monotonic() - start < 20, "data ring not stopped after stop()"
        packets = rx.stream.stats["packets"]
        time.sleep(0.2)
        assert rx.stream.stats["packets"] == packets  # nothing processed after stop
    finally:
        sender.halt.set()
        sender.join(10)
    assert sender.error is None
    assert sender.sent > 0


# ---------------------------------------------------------------------------
# UDP and pcap give the same chunks


def test_same_chunks_as_pcap_replay(place_plain_llc, tmp_path):
    positions = [p for p in range(3, 123) if p % 17 != 5]  # some gaps: incomplete chunks too
    port = free_port()
    pcap = tmp_path / "traffic.pcap"
    pcap_tx = spead2.send.PcapFileStream(
        spead2.ThreadPool(), str(pcap), [("127.0.0.1", port)],
        spead2.send.StreamConfig(max_packet_size=600))
    send_with_stream(pcap_tx, positions)
    del pcap_tx

    results = []
    for source in ("udp", "pcap"):
        rx = Receiver(place_plain_llc, CNT_ITEMS)
        if source == "udp":
            rx.stream.add_udp_reader(port, bind_hostname="127.0.0.1")
            send_with_stream(make_sender([("127.0.0.1", port)], max_packet_size=600, rate=50e6), positions)
        else:
            rx.stream.add_udp_pcap_file_reader(str(pcap))
        chunks = rx.collect()
        assert not rx.timed_out
        results.append((chunks, rx.stream.stats))
    (udp_chunks, udp_stats), (pcap_chunks, pcap_stats) = results
    assert_chunks_equal(udp_chunks, expected_chunks(positions))
    assert sorted(udp_chunks) == sorted(pcap_chunks)
    for chunk_id in udp_chunks:
        np.testing.assert_array_equal(udp_chunks[chunk_id][0], pcap_chunks[chunk_id][0])
        np.testing.assert_array_equal(udp_chunks[chunk_id][1], pcap_chunks[chunk_id][1])
    for name in ("heaps", "packets", "incomplete_heaps_evicted", "incomplete_heaps_flushed",
                 "single_packet_heaps", "too_old_heaps", "rejected_heaps", "malformed_packets"):
        assert udp_stats[name] == pcap_stats[name], name


# ---------------------------------------------------------------------------
# Multicast between two network namespaces


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


class NetnsPair:
    """Namespaces rx and tx joined by a veth pair (rx: v0, tx: v1)."""

    V4 = ("10.87.0.1", "10.87.0.2")
    V6 = ("fd87::1", "fd87::2")

    def __init__(self):
        tag = f"{os.getpid()}"
        self.rx = f"spead2t-rx-{tag}"
        self.tx = f"spead2t-tx-{tag}"

    def create(self):
        _ip("netns", "add", self.rx)
        _ip("netns", "add", self.tx)
        _ip("-n", self.rx, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", self.tx)
        for ns, dev, v4, v6 in ((self.rx, "v0", self.V4[0], self.V6[0]), (self.tx, "v1", self.V4[1], self.V6[1])):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "multicast", "on", "up")
            _ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            _ip("-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        # With a route for the multicast range, joins on the default interface work too.
        _ip("-n", self.rx, "route", "add", "224.0.0.0/4", "dev", "v0")
        _ip("-n", self.tx, "route", "add", "224.0.0.0/4", "dev", "v1")

    def ifindex(self, ns, dev):
        out = _ip("-n", ns, "-o", "link", "show", dev).stdout
        return int(out.split(":", 1)[0])

    def destroy(self):
        for ns in (self.rx, self.tx):
            _ip("netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def netns():
    if shutil.which("ip") is None:
        pytest.skip("the ip command (iproute2) is not installed")
    pair = NetnsPair()
    try:
        pair.create()
    except (subprocess.CalledProcessError, OSError) as exc:
        pair.destroy()
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        pytest.skip(f"cannot create network namespaces with a veth pair (needs root/CAP_NET_ADMIN): {detail}")
    yield pair
    pair.destroy()


#: Runs in the receiving namespace.  argv: JSON list of streams, each a list of
#: reader specs.  Prints READY once every reader is added, then JSON results.
RECEIVER_SCRIPT = r"""
import json, select, sys, time
sys.path.insert(0, sys.argv[2])
import numpy as np
import spead2, spead2.recv
from conftest import _compile_callbacks, PLAIN_SIGNATURE
from spead_builder import HEAPS_PER_CHUNK, CHUNK_PAYLOAD_SIZE, POSITION_ID
import scipy

place = scipy.LowLevelCallable(_compile_callbacks(["place_plain"])["place_plain"].ctypes,
                               signature=PLAIN_SIGNATURE)
streams = []
pool = spead2.ThreadPool()
for readers in json.loads(sys.argv[1]):
    stream = spead2.recv.ChunkRingStream(
        pool, spead2.recv.StreamConfig(max_heaps=8),
        spead2.recv.ChunkStreamConfig(items=[POSITION_ID, spead2.HEAP_LENGTH_ID], max_chunks=4, place=place),
        spead2.recv.ChunkRingbuffer(4), spead2.recv.ChunkRingbuffer(12))
    for _ in range(12):
        stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
                                                data=np.zeros(CHUNK_PAYLOAD_SIZE, np.uint8)))
    for spec in readers:
        kind = spec.pop("kind")
        try:
            if kind == "v4":
                stream.add_udp_reader(spec["group"], spec["port"], buffer_size=1 << 20,
                                      **({"interface_address": spec["iface"]} if "iface" in spec else {}))
            elif kind == "v6":
                stream.add_udp_reader(spec["group"], spec["port"], buffer_size=1 << 20,
                                      interface_index=spec["index"])
            else:
                stream.add_udp_reader(spec["port"], buffer_size=1 << 20, bind_hostname=spec["group"])
        except Exception as exc:
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            sys.exit(0)
    streams.append(stream)
print("READY", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
results = []
for stream in streams:
    ring = stream.data_ringbuffer
    chunks = {}
    timed_out = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 and not timed_out:
            timed_out = True
            stream.stop()
        select.select([ring.data_fd], [], [], 0.2)
        try:
            chunk = ring.get_nowait()
        except spead2.Empty:
            continue
        except spead2.Stopped:
            break
        chunks[chunk.chunk_id] = [chunk.present.tolist(), chunk.data.tobytes().hex()]
        stream.add_free_chunk(chunk)
    results.append({"chunks": chunks, "timed_out": timed_out, "stats": dict(stream.stats.items())})
print(json.dumps(results), flush=True)
"""

#: Runs in the sending namespace.  argv: family, group, port, interface
#: (IPv4 address / IPv6 index), JSON list of positions.
SENDER_SCRIPT = r"""
import json, socket, struct, sys, time
sys.path.insert(0, sys.argv[6])
from spead_builder import position_heap, stop_heap
family, group, port, iface = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
positions = json.loads(sys.argv[5])
if family == "v4":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, int(iface))
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
packets = [p for pos in positions for p in position_heap(pos, pos + 1)]
for i, p in enumerate(packets):
    s.sendto(p, (group, port))
    if i % 100 == 99:
        time.sleep(0.002)
time.sleep(0.1)
s.sendto(stop_heap(100000), (group, port))
"""


def run_multicast(netns, streams, family, group, port, sender_iface, positions, timeout=20):
    """Start the receiver (rx namespace), then the sender (tx namespace);
    returns the receiver's per-stream results (or {"error": ...})."""
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", netns.rx, sys.executable, "-c", RECEIVER_SCRIPT,
         json.dumps(streams), str(TESTS_DIR), "15"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = receiver.stdout.readline()
        if line.strip() != "READY":
            receiver.wait(timeout)
            if line.startswith("{"):
                return json.loads(line)
            raise AssertionError(f"receiver failed: {line}{receiver.stderr.read()}")
        subprocess.run(
            ["ip", "netns", "exec", netns.tx, sys.executable, "-c", SENDER_SCRIPT,
             family, group, str(port), str(sender_iface), json.dumps(list(positions)), str(TESTS_DIR)],
            check=True, timeout=timeout, capture_output=True)
        out, err = receiver.communicate(timeout=timeout)
        assert receiver.returncode == 0, err
        return json.loads(out)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


def check_multicast_result(result, positions):
    assert not result["timed_out"], result["stats"]
    chunks = {int(k): (np.array(v[0], np.uint8), np.frombuffer(bytes.fromhex(v[1]), np.uint8))
              for k, v in result["chunks"].items()}
    assert_chunks_equal(chunks, expected_chunks(positions))


def test_multicast_ipv4(netns):
    group, port = "239.255.87.1", 7148
    positions = list(range(0, 40))
    streams = [
        [{"kind": "v4", "group": group, "port": port, "iface": netns.V4[0]}],
        # A second stream on the same group and port (SO_REUSEADDR), joined
        # on the interface the kernel picks: both get every datagram.
        [{"kind": "v4", "group": group, "port": port}],
    ]
    results = run_multicast(netns, streams, "v4", group, port, netns.V4[1], positions)
    assert len(results) == 2
    for result in results:
        check_multicast_result(result, positions)


def test_multicast_ipv4_port_overload(netns):
    """add_udp_reader(port, bind_hostname=group) joins the group on the default interface."""
    group, port = "239.255.87.2", 7149
    positions = list(range(0, 20))
    results = run_multicast(netns, [[{"kind": "port", "group": group, "port": port}]], "v4", group, port,
                            netns.V4[1], positions)
    check_multicast_result(results[0], positions)


def test_multicast_ipv4_wrong_interface(netns):
    """Joining on an address that belongs to another namespace fails cleanly."""
    result = run_multicast(netns, [[{"kind": "v4", "group": "239.255.87.3", "port": 7150,
                                     "iface": netns.V4[1]}]], "v4", "239.255.87.3", 7150, netns.V4[1], [])
    assert "error" in result
    assert result["error"].startswith("RuntimeError") and "No such device" in result["error"]


def test_multicast_ipv6(netns):
    group, port = "ff14::87:1", 7151
    positions = list(range(0, 40))
    rx_index = netns.ifindex(netns.rx, "v0")
    tx_index = netns.ifindex(netns.tx, "v1")
    streams = [
        [{"kind": "v6", "group": group, "port": port, "index": rx_index}],
        [{"kind": "v6", "group": group, "port": port, "index": 0}],  # the kernel picks the interface
    ]
    results = run_multicast(netns, streams, "v6", group, port, tx_index, positions)
    assert len(results) == 2
    for result in results:
        check_multicast_result(result, positions)
