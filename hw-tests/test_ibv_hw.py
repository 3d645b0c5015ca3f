"""ibverbs receive on a real NIC (see README.md).  Skipped without hardware."""

import json
import os
import re
import shutil
import subprocess
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
    numba = pytest.importorskip("numba")
    scipy = pytest.importorskip("scipy")
    from numba import types

    from spead2.numba import intp_to_voidptr
    from spead2.recv.numba import chunk_place_data

    @numba.cfunc(types.void(types.CPointer(chunk_place_data), types.uintp), nopython=True)
    def place_position(data_ptr, size):
        data = numba.carray(data_ptr, 1)
        items = numba.carray(intp_to_voidptr(data[0].items), 2, dtype=np.int64)
        if items[0] >= 0 and items[1] == HEAP_SIZE:
            data[0].chunk_id = items[0] // HEAPS_PER_CHUNK
            data[0].heap_index = items[0] % HEAPS_PER_CHUNK
            data[0].heap_offset = (items[0] % HEAPS_PER_CHUNK) * HEAP_SIZE

    return scipy.LowLevelCallable(place_position.ctypes, signature="void (void *, size_t)")


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


@pytest.mark.parametrize("comp_vector", [0, -1], ids=["interrupt", "polling"])
def test_multicast_loopback(device_caps, place, comp_vector):
    stream = make_stream(place, comp_vector=comp_vector)
    print("reader kinds:", stream._ibv_reader_kinds())
    time.sleep(0.5)   # let IGMP and flow rules settle
    n = 10 * HEAPS_PER_CHUNK
    send_heaps(n, rate_gbps=1.0)
    seen = 0
    for chunk in stream.data_ringbuffer:
        for j in np.flatnonzero(chunk.present):
            position = chunk.chunk_id * HEAPS_PER_CHUNK + j
            assert np.all(chunk.data[j * HEAP_SIZE:(j + 1) * HEAP_SIZE] == position % 251)
            seen += 1
        stream.add_free_chunk(chunk)
    stream.stop()
    assert seen == n


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
