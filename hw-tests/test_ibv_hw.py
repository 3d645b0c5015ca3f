"""ibverbs receive and send on a real NIC (see README.md).  Skipped without hardware."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import spead2
import spead2.recv
import spead2.send

INTERFACE = os.environ.get("SPEAD2_HW_IBV_INTERFACE")
RATE_GBPS = float(os.environ.get("SPEAD2_HW_RATE_GBPS", "10"))
SECONDS = float(os.environ.get("SPEAD2_HW_SECONDS", "10"))
GROUP = "239.102.0.1"
PORT = 7148
HEAP_SIZE = 8192
HEAPS_PER_CHUNK = 64

pytestmark = [
    pytest.mark.skipif(not INTERFACE, reason="set SPEAD2_HW_IBV_INTERFACE to the IPv4 address of an RDMA NIC"),
    pytest.mark.skipif(not spead2._spead2.recv._ibv_compiled,
                       reason="spead2 built without ibverbs (spead2_ibv_check says how to fix it)"),
]


def netdev_for(address):
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if f" {address}/" in line:
            return line.split()[1]
    return None


@pytest.fixture(scope="module")
def device_caps():
    pyverbs = pytest.importorskip("pyverbs", reason="install python3-pyverbs (Debian) to run hardware tests")
    from pyverbs.device import Context, get_device_list  # noqa: F401

    netdev = netdev_for(INTERFACE)
    assert netdev, f"no interface has address {INTERFACE}"
    ibdev = None
    for entry in os.listdir(f"/sys/class/net/{netdev}/device/infiniband"):
        ibdev = entry
    assert ibdev, f"{netdev} has no RDMA device"
    caps = {"netdev": netdev, "ibdev": ibdev}
    try:
        from pyverbs.providers.mlx5.mlx5dv import Mlx5Context, Mlx5DVContextAttr

        ctx = Mlx5Context(Mlx5DVContextAttr(), name=ibdev)
        dv = ctx.query_mlx5_device()
        caps["striding_rq"] = str(dv)
    except Exception as exc:  # not mlx5, or pyverbs without mlx5 support
        caps["striding_rq"] = f"unavailable: {exc}"
    print(json.dumps(caps, indent=1))
    return caps


def nic_counters(netdev):
    if not shutil.which("ethtool"):
        return {}
    out = subprocess.run(["ethtool", "-S", netdev], capture_output=True, text=True).stdout
    counters = {}
    for line in out.splitlines():
        m = re.match(r"\s*(rx_out_of_buffer|rx_discards_phy|rx_dropped\w*):\s*(\d+)", line)
        if m:
            counters[m.group(1)] = int(m.group(2))
    return counters


def make_stream(place, n_chunks=16, comp_vector=0):
    data_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(1),
        spead2.recv.StreamConfig(max_heaps=8),
        spead2.recv.ChunkStreamConfig(items=[0x1000, spead2.HEAP_LENGTH_ID], max_chunks=4, place=place),
        data_ring,
        free_ring,
    )
    for _ in range(n_chunks):
        stream.add_free_chunk(
            spead2.recv.Chunk(
                present=np.zeros(HEAPS_PER_CHUNK, np.uint8), data=np.zeros(HEAPS_PER_CHUNK * HEAP_SIZE, np.uint8)
            )
        )
    config = spead2.recv.UdpIbvConfig(
        endpoints=[(GROUP, PORT)], interface_address=INTERFACE, comp_vector=comp_vector, buffer_size=64 << 20
    )
    stream.add_udp_ibv_reader(config)
    return stream


@pytest.fixture(scope="module")
def place():
    pytest.importorskip("numba")
    pytest.importorskip("scipy")
    from spead2.recv import numba_place

    # Heap counter placement on the position item (the first item of the
    # stream's ChunkStreamConfig): position i goes to chunk i // HEAPS_PER_CHUNK.
    return numba_place.heap_counter(heap_size=HEAP_SIZE, heaps_per_chunk=HEAPS_PER_CHUNK, cnt_first=0)


def send_heaps(n_heaps, rate_gbps):
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(heap_address_bits=48))
    ig.add_item(0x1000, "position", "", (), format=[("u", 32)])
    ig.add_item(0x1001, "payload", "", (HEAP_SIZE,), dtype=np.uint8)
    stream = spead2.send.UdpStream(
        spead2.ThreadPool(),
        [(GROUP, PORT)],
        spead2.send.StreamConfig(max_packet_size=HEAP_SIZE + 128, rate=rate_gbps * 1e9 / 8),
        interface_address=INTERFACE,
        ttl=1,
    )
    for i in range(n_heaps):
        ig["position"].value = i
        ig["payload"].value = np.full(HEAP_SIZE, i % 251, np.uint8)
        heap = ig.get_heap(descriptors="none", data="all")
        heap.repeat_pointers = True
        stream.send_heap(heap)
    stream.send_heap(ig.get_end())


def drain_checked(stream):
    """Take every chunk until the stream ends, check each present heap's
    payload (position % 251 throughout), stop the stream; heaps seen."""
    seen = 0
    for chunk in stream.data_ringbuffer:
        for j in np.flatnonzero(chunk.present):
            position = chunk.chunk_id * HEAPS_PER_CHUNK + j
            assert np.all(chunk.data[j * HEAP_SIZE:(j + 1) * HEAP_SIZE] == position % 251)
            seen += 1
        stream.add_free_chunk(chunk)
    stream.stop()
    return seen


@pytest.mark.parametrize("comp_vector", [0, -1], ids=["interrupt", "polling"])
def test_multicast_loopback(device_caps, place, comp_vector):
    stream = make_stream(place, comp_vector=comp_vector)
    print("reader kinds:", stream._ibv_reader_kinds())
    time.sleep(0.5)   # let IGMP and flow rules settle
    n = 10 * HEAPS_PER_CHUNK
    send_heaps(n, rate_gbps=1.0)
    assert drain_checked(stream) == n


def test_sustained_rate(device_caps, place):
    stream = make_stream(place, n_chunks=32)
    before = nic_counters(device_caps["netdev"])
    n = int(RATE_GBPS * 1e9 / 8 * SECONDS / HEAP_SIZE)
    start = time.monotonic()
    import threading

    sender = threading.Thread(target=send_heaps, args=(n, RATE_GBPS))
    sender.start()
    seen = 0
    for chunk in stream.data_ringbuffer:
        seen += int(chunk.present.sum())
        stream.add_free_chunk(chunk)
    elapsed = time.monotonic() - start
    sender.join()
    stream.stop()
    after = nic_counters(device_caps["netdev"])
    stats = stream.stats
    report = {
        "offered_gbps": RATE_GBPS,
        "received_gbps": seen * HEAP_SIZE * 8 / elapsed / 1e9,
        "mpps": stats["packets"] / elapsed / 1e6,
        "heaps_sent": n,
        "heaps_received": seen,
        "stream_stats": dict(stats.items()),
        "nic_drops": {k: after.get(k, 0) - before.get(k, 0) for k in after},
        "reader": stream._ibv_reader_kinds(),
    }
    print(json.dumps(report, indent=1))
    assert seen >= 0.99 * n, report


# ---------------------------------------------------------------------------
# Scenarios the emulated device models (tests/test_ibv.py, test_ibv_tools.py);
# here they run against the real driver and NIC, to show whether the model
# holds.  Each prints what it saw, so a failure is informative.

def run_python(code, *args, timeout=120):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_check_command(device_caps):
    """spead2_ibv_check finds the device that owns the address and a usable reader."""
    proc = subprocess.run([sys.executable, "-m", "spead2.tools.ibv_check", "--json", "--interface", INTERFACE],
                          capture_output=True, text=True, timeout=120)
    facts = json.loads(proc.stdout)
    print(json.dumps({k: facts[k] for k in ("probe", "trial", "blockers", "warnings")}, indent=1))
    assert facts["probe"]["interface_device"] == device_caps["ibdev"]
    assert facts["usable"], facts["blockers"]
    assert proc.returncode == 0


MEMLOCK_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, resource, sys
    import spead2, spead2.recv
    from spead2.tools import ibv_check
    limit, buffer_size, interface = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()
    assert libc.capget(ctypes.byref(header), data) == 0
    data[0].effective &= ~(1 << 14)   # CAP_IPC_LOCK
    data[0].permitted &= ~(1 << 14)
    assert libc.capset(ctypes.byref(header), data) == 0
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(1), spead2.recv.StreamConfig(),
        spead2.recv.ChunkStreamConfig(place=ibv_check._ignore_all_place()),
        spead2.recv.ChunkRingbuffer(2), spead2.recv.ChunkRingbuffer(2))
    out = {}
    try:
        stream.add_udp_ibv_reader(spead2.recv.UdpIbvConfig(
            endpoints=[("239.102.0.9", 7148)], interface_address=interface, buffer_size=buffer_size))
        out["kinds"] = stream._ibv_reader_kinds()
        out["vmpin_kib"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmPin")]
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    stream.stop()
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops CAP_IPC_LOCK, so it must start with it (run as root)")
def test_memlock_limit(device_caps):
    """Without CAP_IPC_LOCK and with an 8 MiB memlock limit: the default buffer
    fails up front with the clear message; a 2 MiB buffer fits, i.e. the real
    driver pins no more than the reader's estimate."""
    limit = 8 << 20
    big = json.loads(run_python(MEMLOCK_SCRIPT, limit, 16 << 20, INTERFACE).stdout)
    print("16 MiB buffer:", big)
    assert "RLIMIT_MEMLOCK" in big.get("error", ""), big
    small = json.loads(run_python(MEMLOCK_SCRIPT, limit, 2 << 20, INTERFACE).stdout)
    print("2 MiB buffer:", small)
    assert "error" not in small, small


def test_error_recovery_plain_reader(place):
    """A frame larger than the plain reader's slot completes with an error
    (IBV_WC_LOC_LEN_ERR).  Whether the NIC keeps the queue usable or puts it in
    the error state, heaps sent afterwards must all arrive; the counters say
    which happened."""
    old = os.environ.get("SPEAD2_IBV_NO_MPRQ")
    os.environ["SPEAD2_IBV_NO_MPRQ"] = "1"   # read when the reader is made
    try:
        data_ring, free_ring = spead2.recv.ChunkRingbuffer(16), spead2.recv.ChunkRingbuffer(16)
        stream = spead2.recv.ChunkRingStream(
            spead2.ThreadPool(1), spead2.recv.StreamConfig(max_heaps=8),
            spead2.recv.ChunkStreamConfig(items=[0x1000, spead2.HEAP_LENGTH_ID], max_chunks=4, place=place),
            data_ring, free_ring)
        for _ in range(16):
            stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
                                                    data=np.zeros(HEAPS_PER_CHUNK * HEAP_SIZE, np.uint8)))
        # Slots of about 1 KiB: a 1400-byte datagram does not fit.
        stream.add_udp_ibv_reader(spead2.recv.UdpIbvConfig(
            endpoints=[(GROUP, PORT)], interface_address=INTERFACE, max_size=HEAP_SIZE // 8))
    finally:
        if old is None:
            del os.environ["SPEAD2_IBV_NO_MPRQ"]
        else:
            os.environ["SPEAD2_IBV_NO_MPRQ"] = old
    assert stream._ibv_reader_kinds() == ["plain"]
    time.sleep(0.5)   # let IGMP and flow rules settle
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(INTERFACE))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        s.sendto(b"\0" * 1400, (GROUP, PORT))
    time.sleep(0.5)   # any recovery happens now
    stats_after_error = stream._ibv_reader_stats()
    print("after the oversized frame:", stats_after_error)
    # Small heaps (payload fits the 1 KiB slots).
    n = 4 * HEAPS_PER_CHUNK
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(heap_address_bits=48))
    ig.add_item(0x1000, "position", "", (), format=[("u", 32)])
    ig.add_item(0x1001, "payload", "", (HEAP_SIZE,), dtype=np.uint8)
    sender = spead2.send.UdpStream(spead2.ThreadPool(), [(GROUP, PORT)],
                                   spead2.send.StreamConfig(max_packet_size=HEAP_SIZE // 8, rate=100e6 / 8),
                                   interface_address=INTERFACE, ttl=1)
    for i in range(n):
        ig["position"].value = i
        ig["payload"].value = np.full(HEAP_SIZE, i % 251, np.uint8)
        sender.send_heap(ig.get_heap(descriptors="none", data="all"))
    sender.send_heap(ig.get_end())
    seen = 0
    for chunk in stream.data_ringbuffer:
        seen += int(chunk.present.sum())
        stream.add_free_chunk(chunk)
    stats = stream._ibv_reader_stats()
    stream.stop()
    print(json.dumps({"heaps": seen, "ibv": stats}))
    assert stats[0]["error_completions"] >= 1, "the oversized frame produced no error completion"
    assert not stats[0]["failed"], stats
    assert seen == n


def two_streams(place, configs):
    streams = []
    for endpoints in configs:
        data_ring, free_ring = spead2.recv.ChunkRingbuffer(16), spead2.recv.ChunkRingbuffer(16)
        stream = spead2.recv.ChunkRingStream(
            spead2.ThreadPool(1), spead2.recv.StreamConfig(max_heaps=8),
            spead2.recv.ChunkStreamConfig(items=[0x1000, spead2.HEAP_LENGTH_ID], max_chunks=4, place=place),
            data_ring, free_ring)
        for _ in range(16):
            stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
                                                    data=np.zeros(HEAPS_PER_CHUNK * HEAP_SIZE, np.uint8)))
        stream.add_udp_ibv_reader(spead2.recv.UdpIbvConfig(endpoints=endpoints, interface_address=INTERFACE))
        streams.append(stream)
    return streams


def count_heaps(streams):
    import threading

    counts = [0] * len(streams)

    def consume(i):
        for chunk in streams[i].data_ringbuffer:
            counts[i] += int(chunk.present.sum())
            streams[i].add_free_chunk(chunk)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    return counts, threads


@pytest.mark.parametrize("second", ["same-group", "wildcard"])
def test_two_readers(device_caps, place, second):
    """Two readers on one NIC.  Same group and port (identical rules): each must
    get every heap.  An exact reader plus a wildcard reader (any address on the
    port): the emulated device models ConnectX-5 as giving everything to the
    wildcard and nothing to the exact reader -- this test checks that claim."""
    other = [(GROUP, PORT)] if second == "same-group" else [("", PORT)]
    streams = two_streams(place, [[(GROUP, PORT)], other])
    print("reader kinds:", [s._ibv_reader_kinds() for s in streams])
    counts, threads = count_heaps(streams)
    time.sleep(0.5)   # let IGMP and flow rules settle
    n = 10 * HEAPS_PER_CHUNK
    send_heaps(n, rate_gbps=1.0)
    ended = [1] if second == "wildcard" else [0, 1]
    for i in ended:
        threads[i].join(timeout=60)
    time.sleep(0.5)
    for s in streams:
        s.stop()
    for t in threads:
        t.join()
    print(json.dumps({"second": second, "counts": counts, "device": device_caps}))
    if second == "same-group":
        assert counts == [n, n]
    else:
        assert counts == [0, n], "the emulated device's model of overlapping rules does not match this NIC"


# --------------------------------------------------------------- sending
# UdpIbvStream on the NIC: frames built by spead2 (Ethernet/IPv4/UDP), sent
# from a raw packet queue pair, looped back by the NIC to our own ibverbs
# receiver and to a kernel socket (multicast loopback must be on, see README).

def send_heaps_ibv(n_heaps, rate_gbps, zero_copy, port=PORT):
    pool = np.empty((n_heaps, HEAP_SIZE), np.uint8)
    for i in range(n_heaps):
        pool[i] = i % 251
    config = spead2.send.UdpIbvConfig(
        endpoints=[(GROUP, port)], interface_address=INTERFACE, ttl=1,
        memory_regions=[pool] if zero_copy else [])
    stream = spead2.send.UdpIbvStream(
        spead2.ThreadPool(), spead2.send.StreamConfig(max_packet_size=HEAP_SIZE + 128, rate=rate_gbps * 1e9 / 8),
        config)
    ig = spead2.send.ItemGroup(flavour=spead2.Flavour(heap_address_bits=48))
    ig.add_item(0x1000, "position", "", (), format=[("u", 32)])
    ig.add_item(0x1001, "payload", "", (HEAP_SIZE,), dtype=np.uint8)
    for i in range(n_heaps):
        ig["position"].value = i
        ig["payload"].value = pool[i]
        heap = ig.get_heap(descriptors="none", data="all")
        heap.repeat_pointers = True
        stream.send_heap(heap)
    stream.send_heap(ig.get_end())
    stream.flush()
    return stream._ibv_stats


@pytest.mark.parametrize("zero_copy", [False, True], ids=["copied", "memory-region"])
def test_ibv_send_to_ibv_reader(device_caps, place, zero_copy):
    """UdpIbvStream → NIC loopback → our ibverbs reader: every heap intact."""
    stream = make_stream(place)
    time.sleep(0.5)
    n = 10 * HEAPS_PER_CHUNK
    stats = send_heaps_ibv(n, rate_gbps=1.0, zero_copy=zero_copy)
    print("sender:", stats)
    assert stats["error_completions"] == 0
    assert (stats["zero_copy_bytes"] > 0) == zero_copy
    assert drain_checked(stream) == n


def test_ibv_send_to_kernel_socket(device_caps):
    """UdpIbvStream → NIC loopback → the kernel's UDP stack: the frames'
    headers (checksum, lengths, multicast MAC, TTL) are accepted by Linux."""
    port = PORT + 1
    stream = spead2.recv.Stream(spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=8))
    stream.add_udp_reader(GROUP, port, interface_address=INTERFACE)
    time.sleep(0.5)
    n = 200
    send_heaps_ibv(n, rate_gbps=0.5, zero_copy=True, port=port)
    ig = spead2.ItemGroup()
    positions = []
    for heap in stream:
        ig.update(heap)
        if "payload" in ig and ig["payload"].value is not None:
            positions.append(int(ig["position"].value))
            assert np.all(ig["payload"].value == positions[-1] % 251)
    assert sorted(positions) == list(range(n))
