"""Compare the receive transports on the same SPEAD traffic.

Usage::

    spead2_bench [options]
    python -m spead2.tools.bench [options]

One traffic pattern (heap size, packet size, number of heaps, flavour) is
generated once per packet size and fed through every available transport into
the same chunk placement (a correlator-like layout: heaps are placed by their
timestamp and frequency items, ``channels`` heaps per timestamp):

``buffer``
    the packets, concatenated in memory (``add_buffer_reader``);
``pcap``
    a classic pcap file of Ethernet/IPv4/UDP frames (``add_udp_pcap_file_reader``);
``udp``
    kernel UDP over the loopback interface (``add_udp_reader``), from a sender
    in another process;
``ibverbs``
    ``add_udp_ibv_reader`` on a real device (``--ibv-interface``), or else on
    the emulated test device (labelled "ibverbs (emulated)"): the one shipped
    in the package (``spead2.tools.ibv_emulator``), else one built from
    ``tests/ibv_emulator`` of a source tree.  Its wire is a UDP socket
    carrying one Ethernet frame per datagram.

With ``--streams N`` the receiver is a ``ChunkStreamRingGroup`` of N members
instead of one ``ChunkRingStream``: heap i goes to member i mod N (N memory
buffers, N capture files, N UDP ports, N ibverbs endpoints), each member on a
``ThreadPool(1)`` of its own, pinned to a CPU (``--pin``).  ``--streams
plain,1,2,4`` measures the plain stream and each group size in turn, and adds
a table of each group against the plain stream (the cost of the group).
``--rounds`` repeats everything, ours and the reference taking turns, and
reports the spread.

Every measurement runs in a worker subprocess (so the receiver's CPU time is
its own and ibverbs can be set up through environment variables); the live
transports get their packets from a sender subprocess that replays the
generated packets, optionally at a fixed rate.  For the live transports a
bounded search looks for the highest rate without loss.  With
``--compare-reference`` the same measurements run under the reference spead2
4.5.1 (in a virtualenv of its own) and the table gets ratio columns.

This file is also the worker (``--worker``) and the sender (``--sender``):
both are started as ``python -c`` scripts running this file, so a
reference interpreter that cannot import this package runs the same code.
Only the standard library is imported at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import resource
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

# ---------------------------------------------------------------------------
# Traffic description (shared by the driver and the workers)

HEAP_CNT_ID = 0x01
HEAP_LENGTH_ID = 0x02
PAYLOAD_OFFSET_ID = 0x03
PAYLOAD_LENGTH_ID = 0x04
TIMESTAMP_ID = 0x1600
FREQUENCY_ID = 0x4103
DATA_ID = 0x3300
STREAM_CTRL_ID = 0x06
CTRL_STREAM_STOP = 2

#: Item pointers in every packet: the four packet items, timestamp and
#: frequency (immediate) and the data item (address 0), as a sender that
#: repeats its pointers in every packet would produce.
N_ITEMS = 7
SPEAD_OVERHEAD = 8 + 8 * N_ITEMS
#: Ethernet + IPv4 + UDP headers in front of each packet in the pcap file and
#: on the emulated wire.
FRAME_OVERHEAD = 14 + 20 + 8
#: Largest UDP payload over IPv4.
MAX_UDP_PAYLOAD = 65507
MIN_PACKET_SIZE = SPEAD_OVERHEAD + 8
#: Aim for chunks of about this many bytes.
CHUNK_TARGET = 2 << 20
#: Destination port written into the frames (the emulated NIC steers on it).
FRAME_DST_PORT = 7148
FRAME_SRC_PORT = 7149
FRAME_DST_MAC = bytes(6)  # the loopback interface's MAC address
FRAME_SRC_MAC = bytes([0x02, 0, 0, 0, 0, 0x02])
FRAME_IP = bytes([127, 0, 0, 1])
FLAVOURS = (24, 32, 40, 48)
REF_VERSION = "4.5.1"   # = spead2.tools.reference.VERSION (this module imports only the standard library)
TRANSPORT_NAMES = ("buffer", "pcap", "udp", "ibverbs")
#: Replies from workers start with this, so that stray output is ignored.
REPLY_PREFIX = "@@spead2_bench "
SCHEMA_VERSION = 2


class Traffic:
    """One traffic pattern: the layout of the heaps and how they are cut into packets."""

    def __init__(self, heap_size, packet_size, heaps, addr_bits=48, channels=4):
        self.heap_size = int(heap_size)
        self.packet_size = int(packet_size)
        self.addr_bits = int(addr_bits)
        self.channels = int(channels)
        self.payload_per_packet = self.packet_size - SPEAD_OVERHEAD
        self.packets_per_heap = -(-self.heap_size // self.payload_per_packet)
        self.last_payload = self.heap_size - (self.packets_per_heap - 1) * self.payload_per_packet
        self.heaps = -(-max(int(heaps), 1) // self.channels) * self.channels
        self.n_packets = self.heaps * self.packets_per_heap
        #: Frequency item of channel c is c * freq_step (heap_size / 4 channels of 4-byte samples).
        self.freq_step = max(1, self.heap_size // 4)
        #: The timestamp advances by 2 samples per channel per spectrum.
        self.ts_step = 2 * self.freq_step * self.channels
        self.t_per_chunk = max(1, CHUNK_TARGET // (self.heap_size * self.channels))
        self.heaps_per_chunk = self.t_per_chunk * self.channels
        self.spead_bytes = self.n_packets * SPEAD_OVERHEAD + self.heaps * self.heap_size

    @classmethod
    def from_dict(cls, d):
        return cls(d["heap_size"], d["packet_size"], d["heaps"], d["addr_bits"], d["channels"])

    def check(self):
        """Raise ValueError if the pattern cannot be sent."""
        if self.heap_size < 1:
            raise ValueError("--heap-size must be at least 1 byte")
        if self.packet_size < MIN_PACKET_SIZE:
            raise ValueError(f"packet size {self.packet_size} is too small: at least {MIN_PACKET_SIZE} "
                             f"bytes ({SPEAD_OVERHEAD} bytes of header and item pointers)")
        if self.packet_size > MAX_UDP_PAYLOAD:
            raise ValueError(f"packet size {self.packet_size} is too large: the largest UDP payload "
                             f"is {MAX_UDP_PAYLOAD}")
        limit = 1 << self.addr_bits
        last_ts = (self.heaps // self.channels) * self.ts_step
        if self.heap_size >= limit or self.heaps + 1 >= limit or last_ts >= limit:
            raise ValueError(f"the traffic does not fit in {self.addr_bits} heap address bits")
        if (FREQUENCY_ID >> (63 - self.addr_bits)) != 0:
            raise ValueError(f"item IDs do not fit in SPEAD-64-{self.addr_bits}")

    def as_dict(self):
        return {
            "heap_size": self.heap_size,
            "packet_size": self.packet_size,
            "heaps": self.heaps,
            "addr_bits": self.addr_bits,
            "flavour": f"SPEAD-64-{self.addr_bits}",
            "channels": self.channels,
            "packets_per_heap": self.packets_per_heap,
            "packets": self.n_packets,
            "heaps_per_chunk": self.heaps_per_chunk,
            "spead_bytes": self.spead_bytes,
            "payload_bytes": self.heaps * self.heap_size,
        }

    def key(self):
        return (f"h{self.heap_size}-p{self.packet_size}-n{self.heaps}"
                f"-f{self.addr_bits}-c{self.channels}")

    def payload_bytes_per_packet(self):
        return self.heap_size / self.packets_per_heap

    def packets_for(self, seconds, rate_pps):
        """Whole heaps worth about ``seconds`` at ``rate_pps`` (at most all of them)."""
        want = max(rate_pps * seconds, 2000)
        heaps = -(-int(want) // self.packets_per_heap)
        heaps = -(-heaps // self.channels) * self.channels
        return min(heaps, self.heaps) * self.packets_per_heap


def fill_byte(heap_index):
    """Every payload byte of heap number ``heap_index`` (0-based) has this value."""
    return (heap_index + 1) % 251


def _frame(packet, seq, dst_port=FRAME_DST_PORT):
    """``packet`` in an Ethernet/IPv4/UDP frame, as in the generated pcap file."""
    udp = struct.pack(">HHHH", FRAME_SRC_PORT, dst_port, 8 + len(packet), 0)
    ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28 + len(packet), seq & 0xFFFF, 0x4000, 64, 17, 0,
                               FRAME_IP, FRAME_IP))
    total = sum(struct.unpack(">10H", bytes(ip)))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    ip[10:12] = struct.pack(">H", ~total & 0xFFFF)
    return FRAME_DST_MAC + FRAME_SRC_MAC + b"\x08\x00" + bytes(ip) + udp + packet


# ---------------------------------------------------------------------------
# Traffic generation (numpy, vectorised over heaps)


def _pointer(item_id, value, addr_bits, immediate=True):
    return ((1 << 63) if immediate else 0) | (item_id << addr_bits) | value


def generate(traffic, directory, progress=None):
    """Write the traffic into ``directory``; returns the paths.

    * ``raw``: the SPEAD packets back to back (read by the buffer transport
      and replayed by the UDP sender);
    * ``lengths``: the length of every packet (uint32, ``.npy``);
    * ``pcap``: the same packets as Ethernet/IPv4/UDP frames (linktype 1),
      also replayed onto the emulated ibverbs wire.

    Files already there with the right sizes are reused.
    """
    import numpy as np

    t = traffic
    base = os.path.join(directory, t.key())
    paths = {"raw": base + ".spead", "lengths": base + ".lengths.npy", "pcap": base + ".pcap"}
    k = t.packets_per_heap
    pay = [t.payload_per_packet] * (k - 1) + [t.last_payload]
    spead_len = [SPEAD_OVERHEAD + p for p in pay]
    rec_len = [16 + FRAME_OVERHEAD + s for s in spead_len]
    raw_size = t.spead_bytes
    pcap_size = 24 + t.heaps * sum(rec_len)
    if (os.path.exists(paths["lengths"]) and os.path.exists(paths["raw"]) and os.path.exists(paths["pcap"])
            and os.path.getsize(paths["raw"]) == raw_size and os.path.getsize(paths["pcap"]) == pcap_size):
        return paths

    bits = t.addr_bits
    header = struct.unpack(">Q", struct.pack(">BBBBHH", 0x53, 4, (64 - bits) // 8, bits // 8, 0, N_ITEMS))[0]
    heap_block = sum(spead_len)
    rec_block = sum(rec_len)
    # IPv4 header checksum: the sum of the constant 16-bit words, to which the
    # total length and the identification are added per packet.
    ip_const = bytes([0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]) + FRAME_IP + FRAME_IP
    ip_const_sum = sum(struct.unpack(">10H", ip_const))
    eth = np.frombuffer(FRAME_DST_MAC + FRAME_SRC_MAC + b"\x08\x00", np.uint8)

    batch = max(1, (32 << 20) // (heap_block + rec_block))
    tmp = {name: path + ".tmp" for name, path in paths.items()}
    with open(tmp["raw"], "wb") as raw_f, open(tmp["pcap"], "wb") as pcap_f:
        pcap_f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for start in range(0, t.heaps, batch):
            if progress:
                progress(f"generating {t.packet_size}-byte packets: {100 * start // t.heaps}%")
            n = min(batch, t.heaps - start)
            heap_idx = np.arange(start, start + n, dtype=np.uint64)
            fill = ((heap_idx + 1) % 251).astype(np.uint8)
            ts = (heap_idx // np.uint64(t.channels)) * np.uint64(t.ts_step)
            freq = (heap_idx % np.uint64(t.channels)) * np.uint64(t.freq_step)
            raw = np.empty((n, heap_block), np.uint8)
            pcap = np.empty((n, rec_block), np.uint8)
            pos = rpos = 0
            for j in range(k):
                words = np.empty((n, 1 + N_ITEMS), ">u8")
                words[:, 0] = header
                words[:, 1] = np.uint64(_pointer(HEAP_CNT_ID, 0, bits)) | (heap_idx + np.uint64(1))
                words[:, 2] = _pointer(HEAP_LENGTH_ID, t.heap_size, bits)
                words[:, 3] = _pointer(PAYLOAD_OFFSET_ID, j * t.payload_per_packet, bits)
                words[:, 4] = _pointer(PAYLOAD_LENGTH_ID, pay[j], bits)
                words[:, 5] = np.uint64(_pointer(TIMESTAMP_ID, 0, bits)) | ts
                words[:, 6] = np.uint64(_pointer(FREQUENCY_ID, 0, bits)) | freq
                words[:, 7] = _pointer(DATA_ID, 0, bits, immediate=False)
                packet = raw[:, pos:pos + spead_len[j]]
                packet[:, :SPEAD_OVERHEAD] = words.view(np.uint8).reshape(n, SPEAD_OVERHEAD)
                packet[:, SPEAD_OVERHEAD:] = fill[:, None]
                pos += spead_len[j]
                # pcap record: header, Ethernet, IPv4, UDP, then the packet
                seq = heap_idx * np.uint64(k) + np.uint64(j)
                frame_len = FRAME_OVERHEAD + spead_len[j]
                rec = pcap[:, rpos:rpos + rec_len[j]]
                rh = np.empty((n, 4), "<u4")
                rh[:, 0] = seq // np.uint64(1_000_000)
                rh[:, 1] = seq % np.uint64(1_000_000)
                rh[:, 2] = frame_len
                rh[:, 3] = frame_len
                rec[:, 0:16] = rh.view(np.uint8).reshape(n, 16)
                rec[:, 16:30] = eth
                ip = np.empty((n, 10), ">u2")
                ip_total = 20 + 8 + spead_len[j]
                ip_id = (seq & np.uint64(0xFFFF)).astype(np.uint32)
                s = ip_const_sum + ip_total + ip_id
                s = (s & 0xFFFF) + (s >> 16)
                s = (s & 0xFFFF) + (s >> 16)
                ip[:] = np.frombuffer(ip_const, ">u2")
                ip[:, 1] = ip_total
                ip[:, 2] = ip_id
                ip[:, 5] = (~s) & 0xFFFF
                rec[:, 30:50] = ip.view(np.uint8).reshape(n, 20)
                udp = np.array([FRAME_SRC_PORT, FRAME_DST_PORT, 8 + spead_len[j], 0], ">u2")
                rec[:, 50:58] = udp.view(np.uint8)
                rec[:, 58:] = packet
                rpos += rec_len[j]
            raw.tofile(raw_f)
            pcap.tofile(pcap_f)
    lengths = np.tile(np.array(spead_len, np.uint32), t.heaps)
    with open(tmp["lengths"], "wb") as f:
        np.save(f, lengths)
    for name in paths:
        os.replace(tmp[name], paths[name])
    return paths


def split_pcap(traffic, path, n):
    """Split the capture ``path`` of ``traffic`` into ``n`` files, heap i in
    file i mod n (records unchanged, so each file is in time order)."""
    import numpy as np

    base = path[:-len(".pcap")] if path.endswith(".pcap") else path
    out = [f"{base}.{m}of{n}.pcap" for m in range(n)]
    data = np.fromfile(path, np.uint8)
    header, heaps = data[:24], data[24:].reshape(traffic.heaps, -1)
    for m, name in enumerate(out):
        with open(name + ".tmp", "wb") as f:
            header.tofile(f)
            np.ascontiguousarray(heaps[m::n]).tofile(f)
        os.replace(name + ".tmp", name)
    return out


# ---------------------------------------------------------------------------
# Worker: the receiving side of one measurement (runs under ours or the reference)


def _rusage_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _thread_ids():
    """The kernel thread IDs of this process (empty where /proc is missing)."""
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _thread_cpu(tids):
    """CPU seconds used so far by the threads ``tids`` of this process, or None.

    From ``/proc/self/task/TID/schedstat`` (nanoseconds), else from the
    user and system ticks of ``/proc/self/task/TID/stat`` (1/100 s)."""
    if not tids:
        return None
    total = 0.0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
            continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
    return total


def _thread_switches(tids):
    """[voluntary, involuntary] context switches so far of the threads ``tids``, or None.

    A voluntary switch is a thread going to sleep: a group member waiting
    for the others (LOSSLESS) or for a free chunk, a reader waiting for data."""
    if not tids:
        return None
    total = [0, 0]
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total[0] += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        total[1] += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return total


def _cpu_diff(a, b):
    """What happened between two :meth:`_Receiver.cpu` readings."""
    def sub(x, y):
        if x is None or y is None:
            return None
        if isinstance(x, list):
            return [q - p for p, q in zip(x, y)]
        return y - x

    return (b[0] - a[0], [sub(x, y) for x, y in zip(a[1], b[1])], [sub(x, y) for x, y in zip(a[2], b[2])])


def _add_stats(stats_list):
    """The statistics of several streams, combined as the package combines them
    (``StreamStats + StreamStats``: counters add, maxima take the larger value)."""
    total = stats_list[0]
    try:
        for s in stats_list[1:]:
            total = total + s
        return {k: int(v) for k, v in total.items()}
    except TypeError:  # pragma: no cover - a package without StreamStats.__add__
        out = {}
        for s in stats_list:
            for k, v in s.items():
                out[k] = max(out.get(k, 0), int(v)) if k.startswith("max_") else out.get(k, 0) + int(v)
        return out


def _member_share(total, n, m):
    """How many of items 0 .. total-1 have index m modulo n."""
    return max(0, (total - m + n - 1) // n)


class _Receiver:
    """The benchmark's placement, plus a consumer.

    ``streams`` None: one ChunkRingStream.  ``streams`` N: a
    ChunkStreamRingGroup of N members (heap i is for member i mod N), in
    ``lossless`` (or LOSSY) eviction mode.  Every stream has a ThreadPool(1)
    of its own; with ``cpus``, stream i's thread is pinned to
    ``cpus[i % len(cpus)]``.  The thread IDs of the pools are recorded so
    that the CPU time of each stream can be read.
    """

    N_FREE = 4

    def __init__(self, worker, traffic, streams=None, lossless=True, cpus=(), max_chunks=4):
        import numpy as np
        import spead2
        import spead2.recv

        self.np = np
        self.spead2 = spead2
        self.traffic = traffic
        self.n_streams = streams
        self.place = worker.place_for(traffic)
        n_chunks = max_chunks + self.N_FREE
        self.data_ring = spead2.recv.ChunkRingbuffer(n_chunks)
        self.free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
        self.thread_ids = []
        self.cores = []
        self.pools = []

        def pool(i):
            core = [cpus[i % len(cpus)]] if cpus else []
            before = _thread_ids()
            p = spead2.ThreadPool(1, core)
            self.thread_ids.append(sorted(_thread_ids() - before))
            self.cores.append(core[0] if core else None)
            self.pools.append(p)
            return p

        def chunk_config():
            return spead2.recv.ChunkStreamConfig(
                items=[spead2.HEAP_LENGTH_ID, TIMESTAMP_ID, FREQUENCY_ID],
                max_chunks=max_chunks,
                place=self.place,
            )

        if streams is None:
            self.owner = spead2.recv.ChunkRingStream(
                pool(0), spead2.recv.StreamConfig(max_heaps=4), chunk_config(), self.data_ring, self.free_ring)
            self.streams = [self.owner]
        else:
            modes = spead2.recv.ChunkStreamGroupConfig.EvictionMode
            group_config = spead2.recv.ChunkStreamGroupConfig(
                max_chunks=max_chunks, eviction_mode=modes.LOSSLESS if lossless else modes.LOSSY)
            self.owner = spead2.recv.ChunkStreamRingGroup(group_config, self.data_ring, self.free_ring)
            self.streams = [self.owner.emplace_back(pool(i), spead2.recv.StreamConfig(max_heaps=4), chunk_config())
                            for i in range(streams)]
        for present, data in worker.chunk_memory(traffic, n_chunks):
            self.owner.add_free_chunk(spead2.recv.Chunk(present=present, data=data))
        self.complete = 0
        self.member_complete = [0] * len(self.streams)
        self.chunks = 0
        self.payload_errors = 0
        self.error = None
        self.thread = None

    def packets(self):
        """Packets received so far, by all streams."""
        return sum(int(s.stats["packets"]) for s in self.streams)

    def cpu(self):
        """(process CPU seconds, [CPU seconds of each stream's thread, or None],
        [[voluntary, involuntary] context switches of each stream's thread, or None])."""
        return (_rusage_cpu(), [_thread_cpu(t) for t in self.thread_ids],
                [_thread_switches(t) for t in self.thread_ids])

    def consume(self):
        np = self.np
        t = self.traffic
        hpc = t.heaps_per_chunk
        n = len(self.streams)
        try:
            for chunk in self.data_ring:
                present = np.asarray(chunk.present)
                idx = np.flatnonzero(present)
                self.complete += len(idx)
                self.chunks += 1
                if len(idx):
                    data = np.asarray(chunk.data).reshape(hpc, t.heap_size)
                    heap = chunk.chunk_id * hpc + idx  # the heap's number in the traffic
                    expect = ((heap + 1) % 251).astype(np.uint8)
                    self.payload_errors += int(np.count_nonzero(data[idx, 0] != expect))
                    self.payload_errors += int(np.count_nonzero(data[idx, -1] != expect))
                    if n > 1:
                        for m, c in enumerate(np.bincount(heap % n, minlength=n)):
                            self.member_complete[m] += int(c)
                    else:
                        self.member_complete[0] += len(idx)
                try:
                    self.owner.add_free_chunk(chunk)
                except Exception:  # the stream is stopping
                    pass
        except Exception as exc:  # pragma: no cover - reported to the driver
            self.error = f"consumer: {exc!r}"

    def start_consumer(self):
        self.thread = threading.Thread(target=self.consume, daemon=True)
        self.thread.start()

    def stop(self):
        """Stop; the statistics of each stream (complete only after stop())."""
        self.owner.stop()
        if self.thread is not None:
            self.thread.join(30)
        return [s.stats for s in self.streams]

    def result(self, seconds, cpu, stats, packets_sent=None, heaps_sent=None, packets=None):
        """The measurement.  ``cpu``: the difference of two :meth:`cpu` readings;
        ``stats``: what :meth:`stop` returned."""
        t = self.traffic
        per_stream = [{k: int(v) for k, v in s.items()} for s in stats]
        total = _add_stats(stats) if len(stats) > 1 else per_stream[0]
        packets_sent = t.n_packets if packets_sent is None else packets_sent
        heaps_sent = t.heaps if heaps_sent is None else heaps_sent
        if packets is None:
            packets = total.get("packets", 0)
        seconds = max(seconds, 1e-9)
        process_cpu, thread_cpu, switches = cpu
        rx_cpu = None if None in thread_cpu else sum(thread_cpu)
        rx_switches = None if None in switches else [sum(x[0] for x in switches), sum(x[1] for x in switches)]
        out = {
            "seconds": seconds,
            "cpu_seconds": process_cpu,
            "packets_sent": packets_sent,
            "packets_received": packets,
            "heaps_sent": heaps_sent,
            "heaps_complete": self.complete,
            "heaps_lost": max(0, heaps_sent - self.complete),
            "payload_errors": self.payload_errors,
            "chunks": self.chunks,
            "packets_per_s": packets / seconds,
            "payload_gbps": self.complete * t.heap_size * 8 / seconds / 1e9,
            "cpu_s_per_mpkt": process_cpu / max(packets, 1) * 1e6,
            "streams": self.n_streams,
            "receiver_cpu_seconds": rx_cpu,
            "receiver_cpu_s_per_mpkt": None if rx_cpu is None else rx_cpu / max(packets, 1) * 1e6,
            "receiver_context_switches": rx_switches,
            "cores": self.cores,
            "stats": total,
            "error": self.error or (f"{self.payload_errors} heap(s) with the wrong payload or in the wrong place"
                                    if self.payload_errors else None),
        }
        if self.n_streams is not None:
            n = self.n_streams
            members = []
            for m, (st, c, sw) in enumerate(zip(per_stream, thread_cpu, switches)):
                sent = _member_share(heaps_sent, n, m)
                p = st.get("packets", 0)
                members.append({
                    "core": self.cores[m],
                    "packets": p,
                    "heaps_sent": sent,
                    "heaps_complete": self.member_complete[m],
                    "heaps_lost": max(0, sent - self.member_complete[m]),
                    "cpu_seconds": c,
                    "cpu_s_per_mpkt": None if c is None else c / max(p, 1) * 1e6,
                    "context_switches": sw,
                    "stats": st,
                })
            out["members"] = members
        return out


class _Worker:
    def __init__(self):
        self.places = {}
        self.memory = {}
        self.buffers = {}
        self.live = None
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            self.cpus = []

    def place_for(self, t):
        key = (t.heap_size, t.channels, t.freq_step, t.ts_step, t.t_per_chunk)
        if key not in self.places:
            self.places[key] = _compile_place(*key)
        return self.places[key][1]

    def chunk_memory(self, t, n):
        import numpy as np

        key = (t.heaps_per_chunk, t.heap_size)
        have = self.memory.get(key, [])
        while len(have) < n:
            # Touch the pages now, not during the measurement.
            have.append((np.zeros(t.heaps_per_chunk, np.uint8),
                         np.full(t.heaps_per_chunk * t.heap_size, 0xFF, np.uint8)))
        self.memory = {key: have}
        return have[:n]

    def receiver(self, t, req):
        pin = req.get("pin", True)
        cpus = self.cpus if pin is True else (pin or ())
        return _Receiver(self, t, streams=req.get("streams"), lossless=req.get("lossless", True), cpus=cpus)

    def buffer_sources(self, t, path, streams):
        """The packets of ``path``: one buffer, or one per member (heap i in buffer i mod N)."""
        import numpy as np

        key = (path, streams or 1)
        if key not in self.buffers:
            # Only one traffic pattern at a time.
            self.buffers = {k: v for k, v in self.buffers.items() if k[0] == path}
            whole = self.buffers.get((path, 1))
            if whole is None:
                with open(path, "rb") as f:
                    whole = [f.read()]
                self.buffers[(path, 1)] = whole
            if key[1] > 1:
                heaps = np.frombuffer(whole[0], np.uint8).reshape(t.heaps, -1)
                self.buffers[key] = [heaps[m::key[1]].tobytes() for m in range(key[1])]
        return self.buffers[key]

    # Commands -------------------------------------------------------------

    def cmd_hello(self, req):
        import spead2
        import spead2.recv

        def readers(cls):
            return sorted(a for a in dir(cls) if a.startswith("add_") and a.endswith("_reader"))

        member = getattr(spead2.recv, "ChunkStreamGroupMember", None)
        return {
            "version": spead2.__version__,
            "file": os.path.realpath(spead2.__file__),
            "python": sys.executable,
            "readers": readers(spead2.recv.ChunkRingStream),
            "groups": hasattr(spead2.recv, "ChunkStreamRingGroup") and member is not None,
            "group_readers": readers(member) if member is not None else [],
            "cpus": self.cpus,
        }

    def cmd_offline(self, req):
        """buffer or pcap: ``reps`` runs over the whole traffic; the fastest is returned."""
        t = Traffic.from_dict(req["traffic"])
        transport = req["transport"]
        streams = req.get("streams")
        if transport == "buffer":
            sources = self.buffer_sources(t, req["files"]["raw"], streams)
        elif streams and streams > 1:
            sources = req["files"]["pcap_parts"]
        else:
            sources = [req["files"]["pcap"]]
        runs = []
        for _ in range(max(1, req.get("reps", 1))):
            rx = self.receiver(t, req)
            cpu0 = rx.cpu()
            start = time.perf_counter()
            for stream, source in zip(rx.streams, sources):
                if transport == "buffer":
                    stream.add_buffer_reader(source)
                else:
                    stream.add_udp_pcap_file_reader(source)
            rx.consume()
            seconds = time.perf_counter() - start
            cpu1 = rx.cpu()
            # Statistics are complete only after stop().
            stats = rx.stop()
            cpu = _cpu_diff(cpu0, cpu1)
            runs.append(rx.result(seconds, cpu, stats))
            del rx
        best = min(runs, key=lambda r: r["seconds"])
        best = dict(best)
        best["runs"] = [{"seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
                         "receiver_cpu_seconds": r["receiver_cpu_seconds"]} for r in runs]
        return best

    def cmd_live_start(self, req):
        """udp or ibverbs: set up the stream(s) and wait for the sender."""
        import spead2.recv

        if self.live is not None:
            self.live.stop()
            self.live = None
        t = Traffic.from_dict(req["traffic"])
        rx = self.receiver(t, req)
        max_size = max(t.packet_size + 64, 9200)
        for m, stream in enumerate(rx.streams):
            if req["transport"] == "udp":
                stream.add_udp_reader(req["ports"][m], max_size=max_size, buffer_size=req["buffer_size"],
                                      bind_hostname=req["bind"])
            else:
                config = spead2.recv.UdpIbvConfig(
                    endpoints=[tuple(e) for e in req["endpoints"][m]],
                    interface_address=req["interface"],
                    max_size=max_size + FRAME_OVERHEAD,
                    buffer_size=req["buffer_size"],
                    comp_vector=req.get("comp_vector", 0),
                )
                stream.add_udp_ibv_reader(config)
        rx.start_consumer()
        rx.cpu0 = rx.cpu()
        self.live = rx
        return {"ready": True}

    def cmd_live_wait(self, req):
        """After the sender is done: wait until every packet arrived or none came for a while.

        Chunks reach the data ring only when the stream ends by itself (user
        stop() discards those in flight, in both packages), so the driver
        then has an end-of-stream heap sent to every stream (:meth:`cmd_live_finish`)."""
        rx = self.live
        expected = req["packets_sent"]
        idle = req.get("idle", 0.25)
        now = time.monotonic()
        deadline = now + req.get("timeout", 30)
        # Packets that arrived before this request count as arriving by the
        # time the sender finished; later ones at the time they are seen.
        t_end = req["t_send_end"]
        last = rx.packets()
        last_change = now
        while last < expected and now - last_change <= idle and now < deadline:
            time.sleep(0.002)
            now = time.monotonic()
            packets = rx.packets()
            if packets != last:
                last = packets
                last_change = t_end = now
        cpu1 = rx.cpu()
        rx.cpu_used = _cpu_diff(rx.cpu0, cpu1)
        rx.seconds = t_end - req["t_send_start"]
        rx.data_packets = last  # the end-of-stream packets come later
        rx.expected = expected
        return {"packets": last}

    def cmd_live_finish(self, req):
        """Wait for the end-of-stream heaps (``force``: give up and stop); report."""
        rx = self.live
        if rx is None:
            raise RuntimeError("no live stream")
        rx.thread.join(req.get("wait", 2.0))
        if rx.thread.is_alive() and not req.get("force"):
            return {"stopped": False}
        self.live = None
        stats = rx.stop()
        if not hasattr(rx, "seconds"):
            return {"stopped": False, "stats": _add_stats(stats)}
        if req.get("force") and rx.error is None:
            rx.error = "the end-of-stream heap never arrived (chunks in flight were dropped)"
        result = rx.result(rx.seconds, rx.cpu_used, stats, packets_sent=rx.expected,
                           heaps_sent=rx.expected // rx.traffic.packets_per_heap,
                           packets=min(rx.data_packets, rx.expected))
        result["stopped"] = True
        return result

    def serve(self):
        out = sys.stdout
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            req = json.loads(line)
            op = req.get("op")
            if op == "quit":
                break
            try:
                reply = {"ok": True, "result": getattr(self, "cmd_" + op)(req)}
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            out.write(REPLY_PREFIX + json.dumps(reply) + "\n")
            out.flush()
        if self.live is not None:
            self.live.stop()
        return 0


def _compile_place(heap_size, channels, freq_step, ts_step, t_per_chunk):
    """The numba place callback (the same source for ours and the reference)."""
    import numba
    import numpy as np
    import scipy
    from numba import types

    from spead2.numba import intp_to_voidptr
    from spead2.recv.numba import chunk_place_data

    @numba.cfunc(types.void(types.CPointer(chunk_place_data), types.size_t), nopython=True)
    def place(data_ptr, data_size):
        data = numba.carray(data_ptr, 1)
        items = numba.carray(intp_to_voidptr(data[0].items), 3, dtype=np.int64)
        if items[0] != heap_size:
            return
        timestamp = items[1]
        frequency = items[2]
        if timestamp < 0 or frequency < 0 or timestamp % ts_step != 0 or frequency % freq_step != 0:
            return
        channel = frequency // freq_step
        if channel >= channels:
            return
        t = timestamp // ts_step
        heap_index = (t % t_per_chunk) * channels + channel
        data[0].chunk_id = t // t_per_chunk
        data[0].heap_index = heap_index
        data[0].heap_offset = heap_index * heap_size

    return place, scipy.LowLevelCallable(place.ctypes, signature="void (void *, size_t)")


def worker_main():
    return _Worker().serve()


# ---------------------------------------------------------------------------
# Sender: replays the generated packets over UDP (stdlib + numpy)

UDP_SEGMENT = 103  # from <linux/udp.h>
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000


class _Sender:
    def __init__(self):
        self.loaded = {}
        self.gso = hasattr(socket.socket, "sendmsg") and sys.platform.startswith("linux")

    def _load(self, files, mode, n_dest=1, packets_per_heap=1):
        """The traffic for each of ``n_dest`` destinations (heap i for
        destination i mod n_dest): a list of (data, lengths, batches), where
        data holds the packets (mode "udp") or Ethernet frames (mode
        "frames") back to back and batches are the runs that can go out in
        one GSO send: (offset, nbytes, seg, count).  In frames mode the
        frames for destination m have UDP destination port FRAME_DST_PORT + m.
        """
        import numpy as np

        key = (files["raw"], mode, n_dest)
        if key in self.loaded:
            return self.loaded[key]
        self.loaded = {}  # one at a time: the traffic may be large
        lengths = np.load(files["lengths"]).astype(np.int64)
        if mode == "udp":
            with open(files["raw"], "rb") as f:
                data = f.read()
        else:
            pcap = np.fromfile(files["pcap"], np.uint8)
            frame_len = lengths + FRAME_OVERHEAD
            rec_start = 24 + np.concatenate(([0], np.cumsum(frame_len + 16)[:-1]))
            keep = np.ones(len(pcap), bool)
            keep[:24] = False
            keep[(rec_start[:, None] + np.arange(16)).ravel()] = False
            data = pcap[keep].tobytes()
            del pcap, keep
            lengths = frame_len
        parts = []
        if n_dest == 1:
            parts.append((data, lengths))
        else:
            k = packets_per_heap
            heaps = len(lengths) // k
            heap_lengths = lengths[:k]
            per_heap = np.frombuffer(data, np.uint8).reshape(heaps, int(heap_lengths.sum()))
            frame_starts = np.concatenate(([0], np.cumsum(heap_lengths)[:-1]))
            for m in range(n_dest):
                part = np.ascontiguousarray(per_heap[m::n_dest])
                if mode == "frames":
                    port = FRAME_DST_PORT + m
                    # UDP destination port (checksum 0: nothing else to fix)
                    part[:, frame_starts + 36] = port >> 8
                    part[:, frame_starts + 37] = port & 0xFF
                parts.append((part.tobytes(), np.tile(heap_lengths, part.shape[0])))
            del per_heap
        out = []
        for part, part_lengths in parts:
            batches = []
            offsets = np.concatenate(([0], np.cumsum(part_lengths)))
            ls = part_lengths.tolist()
            i, n = 0, len(ls)
            while i < n:
                seg = ls[i]
                j = i + 1
                total = seg
                while j < n and j - i < GSO_MAX_SEGMENTS and total + ls[j] <= GSO_MAX_BYTES and ls[j] == seg:
                    total += ls[j]
                    j += 1
                # GSO allows the last segment to be shorter.
                if j < n and j - i < GSO_MAX_SEGMENTS and total + ls[j] <= GSO_MAX_BYTES and ls[j] < seg:
                    total += ls[j]
                    j += 1
                batches.append((int(offsets[i]), total, seg, j - i))
                i = j
            out.append((part, ls, batches))
        self.loaded = {key: out}
        return out

    def cmd_send(self, req):
        """Send the first ``n_packets`` packets (whole heaps) of the traffic.

        With several destinations (``dests``), heap i goes to destination
        i mod N; the destinations take turns batch by batch (a batch is at
        most one GSO send), so each gets its packets in order and all of
        them keep pace."""
        dests = [tuple(d) for d in req["dests"]]
        n_dest = len(dests)
        ppp = req.get("packets_per_heap", 1)
        parts = self._load(req["files"], req["mode"], n_dest, ppp)
        n_packets = min(req["n_packets"], sum(len(p[1]) for p in parts))
        if n_dest == 1:
            limits = [n_packets]
        else:
            limits = [_member_share(n_packets // ppp, n_dest, m) * ppp for m in range(n_dest)]
        rate = req.get("rate_pps") or 0.0
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            if req.get("bind"):
                sock.bind((req["bind"], 0))
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(req["bind"]))
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            views = [memoryview(p[0]) for p in parts]
            # Rate-limited: small bursts (about 100 us each).
            burst = GSO_MAX_SEGMENTS if not rate else max(1, min(GSO_MAX_SEGMENTS, int(rate * 100e-6)))
            use_gso = self.gso and req.get("gso", True)
            sent = 0
            member_sent = [0] * n_dest
            nbytes = 0
            errors = 0
            sleep = time.sleep
            clock = time.monotonic
            n_rounds = max(len(p[2]) for p in parts)
            t_start = clock()
            for b in range(n_rounds):
                if sent >= sum(limits):
                    break
                for m in range(n_dest):
                    view, lengths, batches = views[m], parts[m][1], parts[m][2]
                    if b >= len(batches) or member_sent[m] >= limits[m]:
                        continue
                    offset, total, seg, count = batches[b]
                    dest = dests[m]
                    count = min(count, limits[m] - member_sent[m])
                    pos = offset
                    while count > 0:
                        c = min(count, burst)
                        size = min(c * seg, offset + total - pos)
                        if rate:
                            due = t_start + sent / rate
                            delay = due - clock()
                            if delay > 20e-6:
                                sleep(delay)
                        try:
                            if c == 1 or not use_gso:
                                if c == 1:
                                    sock.sendto(view[pos:pos + size], dest)
                                else:
                                    p = pos
                                    for k in range(c):
                                        ln = lengths[member_sent[m] + k]
                                        sock.sendto(view[p:p + ln], dest)
                                        p += ln
                            else:
                                sock.sendmsg([view[pos:pos + size]],
                                             [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))], 0, dest)
                        except OSError as exc:
                            if exc.errno in (errno.ECONNREFUSED, errno.ENOBUFS, errno.EAGAIN):
                                errors += 1  # the packets are lost, as on a busy network
                            elif use_gso and c > 1:
                                use_gso = False  # no UDP GSO here: one datagram per packet
                                self.gso = False
                                continue
                            else:
                                raise
                        sent += c
                        member_sent[m] += c
                        nbytes += size
                        pos += size
                        count -= c
            t_end = clock()
        finally:
            sock.close()
        return {"t_send_start": t_start, "t_send_end": t_end, "packets_sent": sent, "bytes": nbytes,
                "member_packets_sent": member_sent, "send_errors": errors, "gso": use_gso,
                "send_rate_pps": sent / max(t_end - t_start, 1e-9)}

    def cmd_send_stop(self, req):
        """One end-of-stream heap (a single packet with the stream-control item)
        to each destination (in frames mode, to UDP port FRAME_DST_PORT + m)."""
        bits = req["addr_bits"]
        words = [_pointer(HEAP_CNT_ID, req["heap_cnt"], bits), _pointer(HEAP_LENGTH_ID, 0, bits),
                 _pointer(PAYLOAD_OFFSET_ID, 0, bits), _pointer(PAYLOAD_LENGTH_ID, 0, bits),
                 _pointer(STREAM_CTRL_ID, CTRL_STREAM_STOP, bits)]
        packet = struct.pack(">BBBBHH", 0x53, 4, (64 - bits) // 8, bits // 8, 0, len(words))
        packet += struct.pack(f">{len(words)}Q", *words)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            if req.get("bind"):
                sock.bind((req["bind"], 0))
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            for m, dest in enumerate(req["dests"]):
                data = _frame(packet, 0, FRAME_DST_PORT + m) if req["mode"] == "frames" else packet
                with contextlib.suppress(ConnectionRefusedError):
                    sock.sendto(data, tuple(dest))
        return {}

    def serve(self):
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            req = json.loads(line)
            if req.get("op") == "quit":
                break
            try:
                reply = {"ok": True, "result": getattr(self, "cmd_" + req["op"])(req)}
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(REPLY_PREFIX + json.dumps(reply) + "\n")
            sys.stdout.flush()
        return 0


def sender_main():
    return _Sender().serve()


# ---------------------------------------------------------------------------
# Driver: subprocess sessions

_IBV_ENV_PREFIXES = ("SPEAD2_EMU_", "SPEAD2_IBV_LIBRARY_OVERRIDE")


class BenchError(RuntimeError):
    pass


class Session:
    """A worker or sender subprocess that answers one JSON request per line."""

    def __init__(self, python, role, env, cwd, log_path):
        code = ("import runpy, sys; sys.argv = ['spead2_bench'] + sys.argv[1:]; "
                f"runpy.run_path({os.path.abspath(__file__)!r}, run_name='__main__')")
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [python, "-c", code, "--" + role],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=cwd,
        )
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.dead = False

    def log_tail(self, lines=15):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _readline(self, deadline):
        """The next line of output (bytes), b"" at the end, None on timeout."""
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with selectors.DefaultSelector() as sel:
                sel.register(self.fd, selectors.EVENT_READ)
                if not sel.select(remaining):
                    return None
            data = os.read(self.fd, 65536)
            if not data:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def request(self, req, timeout=120):
        if self.dead:
            raise BenchError("the worker has exited")
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            self.kill()
            raise BenchError(f"the worker has exited: {self.log_tail()}") from None
        deadline = time.monotonic() + timeout
        prefix = REPLY_PREFIX.encode()
        while True:
            line = self._readline(deadline)
            if line is None:
                self.kill()
                raise BenchError(f"no reply to {req['op']!r} within {timeout:.0f} s: {self.log_tail()}")
            if not line:
                self.kill()
                raise BenchError(f"the worker exited with status {self.proc.returncode}: {self.log_tail()}")
            if line.startswith(prefix):
                reply = json.loads(line[len(prefix):])
                if not reply["ok"]:
                    raise BenchError(reply["error"])
                return reply["result"]

    def close(self):
        if not self.dead and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.flush()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()
        self.log.close()

    def kill(self):
        self.dead = True
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class Implementation:
    """A Python interpreter with a spead2 (ours, or the reference)."""

    def __init__(self, name, python, env):
        self.name = name
        self.python = python
        self.env = env
        self.info = None


# ---------------------------------------------------------------------------
# Transports


class Transport:
    """One way of getting the traffic into the stream.

    Subclasses set ``name``, ``label`` and ``live`` and implement
    :meth:`available` and :meth:`run`.  Register them with :func:`register`.
    """

    name = ""
    label = ""
    live = False
    #: The ChunkRingStream (and ChunkStreamGroupMember) method it needs.
    reader = ""

    def __init__(self, ctx):
        self.ctx = ctx

    def available(self, impl, streams=None):
        """None if the transport can run under ``impl`` (into ``streams``
        group members, or one ChunkRingStream for None), else the reason it cannot."""
        if streams is not None:
            if not impl.info.get("groups"):
                return f"this spead2 ({impl.name}, {impl.info['version']}) has no ChunkStreamRingGroup"
            if self.reader and self.reader not in impl.info.get("group_readers", []):
                return (f"this spead2 ({impl.name}, {impl.info['version']}) has no "
                        f"ChunkStreamGroupMember.{self.reader}")
        if self.reader and self.reader not in impl.info["readers"]:
            return f"this spead2 ({impl.name}, {impl.info['version']}) has no {self.reader}"
        return None

    def worker_env(self):
        """Extra environment for the receiving worker."""
        return {}

    def session(self, impl):
        return self.ctx.session(impl, self)

    def receiver_args(self, streams):
        """The request fields that describe the receiver (stream or group)."""
        args = self.ctx.args
        return {"streams": streams, "lossless": args.eviction_mode == "lossless", "pin": args.pin}

    def run(self, impl, traffic, rate=None, n_packets=None, streams=None):
        """One measurement; returns the result dictionary."""
        raise NotImplementedError


TRANSPORTS = {}


def register(cls):
    TRANSPORTS[cls.name] = cls
    return cls


class OfflineTransport(Transport):
    def run(self, impl, traffic, rate=None, n_packets=None, streams=None):
        files = dict(self.ctx.traffic_files(traffic))
        if self.name == "pcap" and streams and streams > 1:
            files["pcap_parts"] = self.ctx.pcap_parts(traffic, streams)
        req = {"op": "offline", "transport": self.name, "traffic": traffic.as_dict(), "files": files,
               "reps": self.ctx.args.reps}
        req.update(self.receiver_args(streams))
        return self.session(impl).request(req, timeout=60 + traffic.n_packets * 1e-4 * self.ctx.args.reps)


@register
class BufferTransport(OfflineTransport):
    name = "buffer"
    label = "buffer (memory)"
    reader = "add_buffer_reader"


@register
class PcapTransport(OfflineTransport):
    name = "pcap"
    label = "pcap replay"
    reader = "add_udp_pcap_file_reader"


class LiveTransport(Transport):
    live = True
    send_mode = "udp"

    def start_args(self, impl, n):
        """Request fields for ``n`` receiving streams."""
        raise NotImplementedError

    def destinations(self, n):
        """Where the sender sends the packets of stream 0 .. n-1."""
        raise NotImplementedError

    def run(self, impl, traffic, rate=None, n_packets=None, streams=None):
        ctx = self.ctx
        n = streams or 1
        files = ctx.traffic_files(traffic)
        n_packets = traffic.n_packets if n_packets is None else n_packets
        worker = self.session(impl)
        sender = ctx.sender()
        req = {"op": "live_start", "transport": self.name, "traffic": traffic.as_dict()}
        req.update(self.receiver_args(streams))
        req.update(self.start_args(impl, n))
        worker.request(req, timeout=60)
        target = {"mode": self.send_mode, "dests": [list(d) for d in self.destinations(n)],
                  "bind": ctx.args.send_interface or ""}
        try:
            sent = sender.request(
                dict(target, op="send", files=files, rate_pps=rate or 0, n_packets=n_packets,
                     packets_per_heap=traffic.packets_per_heap),
                timeout=120 + (n_packets / rate if rate else 0))
            worker.request({"op": "live_wait", "packets_sent": sent["packets_sent"],
                            "t_send_start": sent["t_send_start"], "t_send_end": sent["t_send_end"],
                            "idle": 0.25, "timeout": 30}, timeout=90)
            for _ in range(3):
                sender.request(dict(target, op="send_stop", addr_bits=traffic.addr_bits,
                                    heap_cnt=traffic.heaps + 1), timeout=30)
                result = worker.request({"op": "live_finish", "wait": 2.0}, timeout=60)
                if result["stopped"]:
                    break
            else:
                result = worker.request({"op": "live_finish", "force": True}, timeout=60)
        except BenchError:
            with contextlib.suppress(BenchError):
                worker.request({"op": "live_finish", "force": True}, timeout=30)
            raise
        result["send_rate_pps"] = sent["send_rate_pps"]
        result["send_errors"] = sent["send_errors"]
        result["requested_rate_pps"] = rate
        result["sender_gso"] = sent["gso"]
        if streams is not None:
            for member, count in zip(result["members"], sent["member_packets_sent"]):
                member["packets_sent"] = count
        return result


def _free_udp_ports(n):
    """``n`` different free UDP ports on 127.0.0.1."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def _free_udp_port():
    return _free_udp_ports(1)[0]


def _udp_buffer_size():
    """The receive buffer to ask for: 8 MiB, or what the kernel allows."""
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            return max(1 << 20, min(8 << 20, int(f.read())))
    except (OSError, ValueError):
        return 8 << 20


@register
class UdpTransport(LiveTransport):
    name = "udp"
    label = "kernel UDP (loopback)"
    reader = "add_udp_reader"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.ports = []

    def available(self, impl, streams=None):
        reason = super().available(impl, streams)
        if reason:
            return reason
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
        except OSError as exc:
            return f"cannot bind a UDP socket on 127.0.0.1: {exc}"
        return None

    def start_args(self, impl, n):
        # Fresh ports for every run: a lingering socket cannot steal packets.
        self.ports = _free_udp_ports(n)
        return {"ports": self.ports, "bind": "127.0.0.1", "buffer_size": _udp_buffer_size()}

    def destinations(self, n):
        return [("127.0.0.1", port) for port in self.ports[:n]]


@register
class IbvTransport(LiveTransport):
    name = "ibverbs"
    label = "ibverbs"
    reader = "add_udp_ibv_reader"

    def __init__(self, ctx):
        super().__init__(ctx)
        args = ctx.args
        self.real = bool(args.ibv_interface)
        self.label = "ibverbs" if self.real else "ibverbs (emulated)"
        self.wire_port = None
        self.library = None
        self.reason = None
        if self.real:
            self.interface = args.ibv_interface
            self.endpoint = args.ibv_endpoint or (args.ibv_interface, FRAME_DST_PORT)
            self.send_mode = "udp"
        else:
            self.interface = "127.0.0.1"
            self.endpoint = ("127.0.0.1", FRAME_DST_PORT)
            self.send_mode = "frames"

    def available(self, impl, streams=None):
        reason = super().available(impl, streams)
        if reason or self.real:
            return reason
        if impl.name != "ours":
            return "the reference cannot use the emulated device"
        if self.library is None and self.reason is None:
            self.library, self.reason = self.ctx.emulator_library()
        return self.reason

    def worker_env(self):
        if self.real:
            return {}
        if self.wire_port is None:
            self.wire_port = _free_udp_port()
        return {
            "SPEAD2_IBV_LIBRARY_OVERRIDE": self.library,
            "SPEAD2_EMU_INTERFACE": "127.0.0.1",
            "SPEAD2_EMU_WIRE": f"udp:127.0.0.1:{self.wire_port}",
        }

    def endpoints(self, n):
        """Stream m listens on the endpoint's port + m (the emulated wire's
        frames for stream m carry that UDP destination port)."""
        host, port = self.endpoint
        return [(host, port + m) for m in range(n)]

    def start_args(self, impl, n):
        return {"endpoints": [[list(e)] for e in self.endpoints(n)], "interface": self.interface,
                "buffer_size": self.ctx.args.ibv_buffer_size}

    def destinations(self, n):
        if self.real:
            return self.endpoints(n)
        return [("127.0.0.1", self.wire_port)] * n


# ---------------------------------------------------------------------------
# Lossless rate search


def rate_search(transport, impl, traffic, first, args, progress, streams=None):
    """Highest rate (packets/s) at which the transport loses nothing.

    ``first`` is the measurement with the sender at full speed.  If it lost
    nothing, the answer is the sender's own rate (the receiver kept up with
    everything the sender could do).  Otherwise a bisection between 0 and
    the sender's full speed, starting at the rate the receiver managed, with
    at most ``args.rate_steps`` steps of about ``args.step_time`` seconds,
    stops when the bracket is narrower than ``args.rate_tolerance``.
    """
    full = first["send_rate_pps"]
    if _lossless(first):
        return {"packets_per_s": full, "sender_limited": True, "steps": []}
    lo, hi = 0.0, full
    guess = min(first["packets_per_s"] * 0.95, full * 0.9)
    if guess <= 0:
        guess = full / 2
    steps = []
    for i in range(args.rate_steps):
        progress(f"[{transport.ctx.step}/{transport.ctx.total}] {transport.label} [{impl.name}] "
                 f"{traffic.packet_size} B: rate search step "
                 f"{i + 1}/{args.rate_steps} at {guess / 1e3:.0f} kpkt/s")
        n = traffic.packets_for(args.step_time, guess)
        r = transport.run(impl, traffic, rate=guess, n_packets=n, streams=streams)
        ok = _lossless(r)
        achieved = min(guess, r["send_rate_pps"])
        steps.append({"rate_pps": guess, "send_rate_pps": r["send_rate_pps"], "packets": n,
                      "heaps_sent": r["heaps_sent"], "heaps_complete": r["heaps_complete"], "lossless": ok})
        if ok:
            lo = max(lo, achieved)
        else:
            # (a loss below a rate already found lossless is noise: it ends the search)
            hi = max(lo, min(hi, achieved))
        if hi - lo < args.rate_tolerance * hi:
            break
        guess = (lo + hi) / 2 if lo > 0 else hi / 2
        if any(abs(guess - s["rate_pps"]) < args.rate_tolerance * guess / 2 for s in steps):
            # The sender cannot reach the rates in between (it shares the CPUs
            # with the receiver): asking again would give the same answer.
            break
    return {"packets_per_s": lo, "sender_limited": False, "steps": steps}


def _lossless(r):
    return r["heaps_complete"] >= r["heaps_sent"] and r["payload_errors"] == 0


# ---------------------------------------------------------------------------
# Driver context


class Progress:
    """One status line on stderr when it is a terminal; silent otherwise."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.shown = False

    def __call__(self, text):
        if not self.enabled:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        sys.stderr.write("\r\x1b[K" + text[:width])
        sys.stderr.flush()
        self.shown = True

    def clear(self):
        if self.enabled and self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False

    def note(self, text):
        """A line that stays (errors, warnings): always printed."""
        self.clear()
        print(f"spead2_bench: {text}", file=sys.stderr)


def _repo_root():
    """The source tree this file belongs to, when it runs from one."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, os.pardir, os.pardir, os.pardir))
    if os.path.exists(os.path.join(root, "tests", "ibv_emulator", "build.sh")):
        return root
    return None


def _find_emulator_source():
    """tests/ibv_emulator of the source tree this file is in, or of the
    working directory or one of its parents."""
    root = _repo_root()
    candidates = [root] if root else []
    here = os.getcwd()
    while True:
        candidates.append(here)
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    for c in candidates:
        path = os.path.join(c, "tests", "ibv_emulator")
        if os.path.exists(os.path.join(path, "build.sh")):
            return path
    return None


def _cmake_source(out):
    """The source directory of the cmake build in ``out``/cmake-build, if there is one."""
    try:
        with open(os.path.join(out, "cmake-build", "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("CMAKE_HOME_DIRECTORY:"):
                    return os.path.realpath(line.split("=", 1)[1].strip())
    except OSError:
        pass
    return None


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "spead2-bench")


class Context:
    def __init__(self, args, progress):
        self.args = args
        self.progress = progress
        self.sessions = {}
        self._sender = None
        self.files = {}
        self.parts = {}
        self.step = 0
        self.total = 0
        self.tmp = tempfile.mkdtemp(prefix="spead2-bench-", dir=args.tmpdir)
        self.log_dir = os.path.join(self.tmp, "logs")
        os.makedirs(self.log_dir)

    def traffic_files(self, traffic):
        key = traffic.key()
        if key not in self.files:
            self.files[key] = generate(traffic, self.tmp, self.progress)
        return self.files[key]

    def pcap_parts(self, traffic, n):
        """The pcap file split into ``n`` capture files (heap i in file i mod n)."""
        key = (traffic.key(), n)
        if key not in self.parts:
            self.progress(f"splitting the {traffic.packet_size}-byte capture into {n} files")
            self.parts[key] = split_pcap(traffic, self.traffic_files(traffic)["pcap"], n)
        return self.parts[key]

    def drop_traffic(self, traffic):
        paths = list(self.files.pop(traffic.key(), {}).values())
        for key in [k for k in self.parts if k[0] == traffic.key()]:
            paths += self.parts.pop(key)
        if not self.args.keep_traffic:
            for path in paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def session(self, impl, transport):
        key = (impl.name, transport.name)
        s = self.sessions.get(key)
        if s is None or s.dead:
            env = dict(impl.env)
            env.update(transport.worker_env())
            log = os.path.join(self.log_dir, f"{impl.name}-{transport.name}.log")
            s = Session(impl.python, "worker", env, self.tmp, log)
            self.sessions[key] = s
        return s

    def close_session(self, impl, transport):
        s = self.sessions.pop((impl.name, transport.name), None)
        if s is not None:
            s.close()

    def sender(self):
        if self._sender is None or self._sender.dead:
            env = dict(os.environ)
            env.pop("SPEAD2_IBV_LIBRARY_OVERRIDE", None)
            self._sender = Session(sys.executable, "sender", env, self.tmp,
                                   os.path.join(self.log_dir, "sender.log"))
        return self._sender

    def emulator_library(self):
        """(path, None) of the emulated ibverbs library, or (None, reason)."""
        given = self.args.ibv_emulator or os.environ.get("SPEAD2_BENCH_IBV_EMULATOR")
        if given and given.endswith(".so"):
            if os.path.exists(given):
                return os.path.abspath(given), None
            return None, f"emulator library {given} does not exist"
        if given:
            source = os.path.abspath(given)
        else:
            # The test device shipped in the package (wheels built with the
            # rdma-core headers): no source tree needed.
            from spead2.tools import ibv_emulator

            packaged = ibv_emulator.packaged_library()
            if packaged is not None:
                return str(packaged), None
            source = _find_emulator_source()
        build = os.path.join(source, "build.sh") if source else None
        out = os.path.join(cache_dir(), "ibv_emulator")
        if build and _cmake_source(out) not in (None, os.path.realpath(source)):
            # Built from another source tree (say another git worktree): cmake
            # refuses to reuse that build directory, so this tree gets its own.
            tag = hashlib.sha1(os.path.realpath(source).encode()).hexdigest()[:12]
            out = os.path.join(cache_dir(), f"ibv_emulator-{tag}")
        lib = os.path.join(out, "libspead2_ibv_emulator.so")
        if not build or not os.path.exists(build):
            if not given and os.path.exists(lib):
                return lib, None  # built by an earlier run from a source tree
            return None, ("emulated device not found (give --ibv-emulator with the library or "
                          "the tests/ibv_emulator directory of a source tree)")
        newest = max(os.path.getmtime(os.path.join(source, f)) for f in os.listdir(source))
        if os.path.exists(lib) and os.path.getmtime(lib) >= newest:
            return lib, None
        self.progress("building the emulated ibverbs device (tests/ibv_emulator/build.sh)")
        from spead2.tools import reference   # driver side only

        env = {k: v for k, v in os.environ.items() if k not in reference.DROP_ENV}
        try:
            proc = subprocess.run(["bash", build, out], capture_output=True, text=True, timeout=900,
                                  stdin=subprocess.DEVNULL, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"building the emulated device failed: {exc}"
        if proc.returncode != 0 or not os.path.exists(lib):
            lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "rror" in ln), lines[-1] if lines else "no output")
            return None, f"building the emulated device with {build} failed: {why}"
        return lib, None

    def close(self):
        for s in list(self.sessions.values()):
            s.close()
        self.sessions.clear()
        if self._sender is not None:
            self._sender.close()
        if self.args.keep_traffic:
            self.progress.note(f"traffic and worker logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# The reference virtualenv


def _clean_ref_env():
    from spead2.tools import reference as _reference   # driver side only

    return _reference.clean_env(_IBV_ENV_PREFIXES)


def reference_python(venv, progress):
    """The interpreter of the reference virtualenv (spead2.tools.reference),
    created (or completed) on demand."""
    from spead2.tools import reference as _reference   # driver side only

    venv = venv or _reference.default_venv()
    allow_any = os.environ.get("SPEAD2_BENCH_ALLOW_ANY_REFERENCE") == "1"
    python = _reference.python_in(venv)
    if allow_any and os.path.exists(python) and _reference.check(python):
        return python
    try:
        return _reference.ensure(venv, progress)
    except _reference.ReferenceSetupError as exc:
        raise BenchError(str(exc)) from None


# ---------------------------------------------------------------------------
# Running everything


def _ours_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(_IBV_ENV_PREFIXES)}
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def machine_info():
    virtual = False
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        virtual = bool(re.search(r"^flags\s*:.*\bhypervisor\b", text, re.M))
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if m:
            model = m.group(1).strip()
    except OSError:
        pass
    cpus = os.cpu_count() or 1
    kind = "virtual machine" if virtual else "machine"
    return {"cpus": cpus, "virtual": virtual, "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "description": f"{cpus}-core {kind}"}


def _streams_text(streams):
    """How the receiver is made, for labels: "" (one ChunkRingStream) or "group of N"."""
    if streams is None:
        return "plain stream"
    return "group of 1 member" if streams == 1 else f"group of {streams} members"


def _measure(ctx, transport, impl, traffic, streams=None, search=True):
    """Measurement plus (for live transports, with ``search``) the lossless
    rate, or an n/a entry."""
    args = ctx.args
    reason = transport.available(impl, streams)
    if reason:
        return {"available": False, "reason": reason}
    ctx.step += 1
    what = f"{transport.label} [{impl.name}, {_streams_text(streams)}]"
    ctx.progress(f"[{ctx.step}/{ctx.total}] {what} {traffic.packet_size} B: measuring")
    try:
        result = transport.run(impl, traffic, streams=streams)
        result["available"] = True
        result["reason"] = None
        if transport.live:
            result["lossless"] = None
            if args.rate_search and search:
                lossless = rate_search(transport, impl, traffic, result, args, ctx.progress, streams=streams)
                lossless["payload_gbps"] = (lossless["packets_per_s"] * traffic.payload_bytes_per_packet()
                                            * 8 / 1e9)
                result["lossless"] = lossless
        if result.get("error"):
            raise BenchError(result["error"])
        return result
    except BenchError as exc:
        ctx.progress.note(f"{what} failed: {exc}")
        ctx.close_session(impl, transport)
        return {"available": False, "reason": f"failed: {exc}", "failed": True}


def _ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


#: Ratios (ours / reference) in the report.
RATIO_KEYS = ("packets_per_s", "payload_gbps", "cpu_s_per_mpkt", "receiver_cpu_s_per_mpkt")
#: What each round keeps, with --rounds.
ROUND_KEYS = ("seconds", "packets_per_s", "payload_gbps", "cpu_seconds", "cpu_s_per_mpkt",
              "receiver_cpu_seconds", "receiver_cpu_s_per_mpkt", "heaps_sent", "heaps_complete", "heaps_lost",
              "receiver_context_switches")
#: Their spread (lowest, median, highest), with --rounds.
SPREAD_KEYS = ("packets_per_s", "payload_gbps", "cpu_s_per_mpkt", "receiver_cpu_s_per_mpkt")


def _ratios(ours, ref):
    if not (ours.get("available") and ref.get("available")):
        return None
    out = {key: _ratio(ours.get(key), ref.get(key)) for key in RATIO_KEYS}
    if ours.get("lossless") and ref.get("lossless"):
        out["lossless_packets_per_s"] = _ratio(ours["lossless"]["packets_per_s"],
                                               ref["lossless"]["packets_per_s"])
    return out


def _spread(values):
    """{"min", "median", "max"} of the values that are not None (None if none are)."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return {"min": values[0], "median": median, "max": values[-1]}


def _combine_rounds(ms):
    """One measurement from the rounds of one row: the round with the median
    packet rate, plus every round's numbers ("rounds") and their spread."""
    if len(ms) == 1:
        return ms[0]
    for m in ms:
        if not m.get("available"):
            return m  # a failure (or n/a) in any round decides
    order = sorted(range(len(ms)), key=lambda i: ms[i]["packets_per_s"])
    pick = order[(len(ms) - 1) // 2]
    out = dict(ms[pick])
    out["round"] = pick
    out["rounds"] = []
    for m in ms:
        r = {k: m.get(k) for k in ROUND_KEYS}
        if "members" in m:
            r["member_cpu_seconds"] = [x["cpu_seconds"] for x in m["members"]]
            r["member_heaps_lost"] = [x["heaps_lost"] for x in m["members"]]
        out["rounds"].append(r)
    out["spread"] = {k: _spread([m.get(k) for m in ms]) for k in SPREAD_KEYS}
    out["heaps_lost_all_rounds"] = sum(m["heaps_lost"] for m in ms)
    if ms[0].get("lossless") is not None:
        out["lossless"] = ms[0]["lossless"]  # the rate search runs in the first round only
    return out


def _round_ratios(ours, ref):
    """Ratios ours / reference, round by round (each pair measured one after
    the other); with several rounds, the median and the spread of them."""
    per_round = [_ratios(o, r) for o, r in zip(ours, ref)]
    if not per_round or None in per_round:
        return None
    if len(per_round) == 1:
        return per_round[0]
    out = {}
    spread = {}
    for key in RATIO_KEYS:
        spread[key] = _spread([r.get(key) for r in per_round])
        out[key] = spread[key]["median"] if spread[key] else None
    if "lossless_packets_per_s" in per_round[0]:
        out["lossless_packets_per_s"] = per_round[0]["lossless_packets_per_s"]
    out["spread"] = spread
    out["rounds"] = per_round
    return out


def _group_overhead(transport, traffic, per, impls):
    """Each group against the plain ChunkRingStream on the same traffic, round by round."""
    out = []
    if None not in per:
        return out
    for impl in impls:
        base = per[None][impl.name]
        for streams, by_impl in per.items():
            if streams is None:
                continue
            group = by_impl[impl.name]
            if not all(m.get("available") for m in base + group):
                continue
            entry = {"transport": transport.name, "label": transport.label, "packet_size": traffic.packet_size,
                     "impl": impl.name, "streams": streams, "rounds": len(group)}
            for key, name in (("receiver_cpu_s_per_mpkt", "receiver_cpu_per_packet"),
                              ("cpu_s_per_mpkt", "cpu_per_packet"), ("packets_per_s", "packets_per_s")):
                entry[name] = _spread([_ratio(g.get(key), b.get(key)) for g, b in zip(group, base)])
            out.append(entry)
    return out


def run_all(args, progress):
    ctx = Context(args, progress)
    impls = [Implementation("ours", sys.executable, _ours_env())]
    reference = None
    try:
        if args.compare_reference:
            python = args.ref_python or reference_python(args.ref_venv, progress)
            impls.append(Implementation("reference", python, _clean_ref_env()))
        transports = [TRANSPORTS[name](ctx) for name in args.transports]
        # Hello from every implementation (through the cheapest worker).
        for impl in impls:
            progress(f"starting the {impl.name} worker")
            s = Session(impl.python, "worker", impl.env, ctx.tmp,
                        os.path.join(ctx.log_dir, f"{impl.name}-hello.log"))
            try:
                impl.info = s.request({"op": "hello"}, timeout=300)
            finally:
                s.close()
        ours_info = impls[0].info
        if len(impls) > 1:
            ref_info = impls[1].info
            reference = {"version": ref_info["version"], "file": ref_info["file"], "python": ref_info["python"]}
            if os.environ.get("SPEAD2_BENCH_ALLOW_ANY_REFERENCE") != "1":
                if ref_info["file"] == ours_info["file"]:
                    raise BenchError(f"the reference interpreter imports our spead2 ({ref_info['file']})")
                if ref_info["version"] != REF_VERSION:
                    raise BenchError(f"the reference interpreter has spead2 {ref_info['version']}, "
                                     f"not {REF_VERSION}")
        rows = []
        overhead = []
        scenarios = [Traffic(args.heap_size, p, args.heaps, args.flavour, args.channels)
                     for p in args.packet_sizes]
        ctx.total = len(scenarios) * len(transports) * len(impls) * len(args.stream_list) * args.rounds
        # Scenario by scenario (the traffic files of one at a time); the
        # workers stay up from one scenario to the next.  Within a transport:
        # round by round, each receiver (plain stream, groups) in turn, ours
        # then the reference, so that what is compared was measured close together.
        for traffic in scenarios:
            ctx.traffic_files(traffic)
            for transport in transports:
                per = {s: {impl.name: [] for impl in impls} for s in args.stream_list}
                for rnd in range(args.rounds):
                    for streams in args.stream_list:
                        for impl in impls:
                            per[streams][impl.name].append(
                                _measure(ctx, transport, impl, traffic, streams, search=(rnd == 0)))
                for streams in args.stream_list:
                    row = {"transport": transport.name, "label": transport.label, "live": transport.live,
                           "packet_size": traffic.packet_size, "streams": streams, "traffic": traffic.as_dict()}
                    for impl in impls:
                        row[impl.name] = _combine_rounds(per[streams][impl.name])
                    if len(impls) > 1:
                        row["ratio"] = _round_ratios(per[streams]["ours"], per[streams]["reference"])
                    rows.append(row)
                overhead.extend(_group_overhead(transport, traffic, per, impls))
            ctx.drop_traffic(traffic)
    finally:
        progress.clear()
        ctx.close()
    return {
        "tool": "spead2_bench",
        "schema": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "spead2": {"version": ours_info["version"], "file": ours_info["file"], "python": sys.executable},
        "reference": reference,
        "config": {
            "heap_size": args.heap_size, "packet_sizes": args.packet_sizes, "heaps": scenarios[0].heaps,
            "flavour": f"SPEAD-64-{args.flavour}", "channels": args.channels,
            "transports": args.transports, "rate_search": args.rate_search, "rate_steps": args.rate_steps,
            "step_time": args.step_time, "rate_tolerance": args.rate_tolerance, "reps": args.reps,
            "quick": args.quick, "compare_reference": args.compare_reference,
            "ibv_interface": args.ibv_interface,
            "streams": args.stream_list, "rounds": args.rounds, "eviction_mode": args.eviction_mode,
            "pin": args.pin, "cpus": ours_info.get("cpus", []) if args.pin is True else (args.pin or []),
        },
        "results": rows,
        "group_overhead": overhead,
    }


# ---------------------------------------------------------------------------
# Output


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}g}" if x < 1 else f"{x:.2f}"


def _lossless_text(m):
    ll = m.get("lossless")
    if not ll:
        return "-"
    text = _fmt(ll["payload_gbps"])
    return (">=" + text) if ll["sender_limited"] else text


def _ratio_text(ratio, key):
    """A ratio, with the lowest and highest round in brackets when there were several."""
    text = _fmt(ratio.get(key))
    spread = (ratio.get("spread") or {}).get(key)
    if spread and spread["min"] != spread["max"]:
        text += f" ({_fmt(spread['min'])}-{_fmt(spread['max'])})"
    return text


def _streams_cell(streams):
    return "plain" if streams is None else str(streams)


def _member_cpu_text(m):
    members = m.get("members")
    if not members:
        return "-"
    return "/".join("-" if x["cpu_seconds"] is None else f"{x['cpu_seconds'] * 1e3:.0f}" for x in members)


def format_table(report):
    """The results as a plain-text table."""
    compare = report["reference"] is not None
    groups = any(r.get("streams") is not None for r in report["results"])
    cfg = report["config"]
    rounds = cfg.get("rounds", 1)
    head = ["transport", "packet"]
    if groups:
        head.append("streams")
    head += ["Mpkt/s", "Gb/s", "CPU s/Mpkt"]
    if groups:
        head += ["rx CPU s/Mpkt", "member CPU ms"]
    head += ["heaps ok/sent", "lossless Gb/s"]
    if compare:
        head += ["ref Mpkt/s", "x", "ref CPU", "x", "ref lossless", "x"]
    rows = []
    notes = []
    for r in report["results"]:
        o = r["ours"]
        what = r["label"] if not groups else f"{r['label']}, {_streams_text(r.get('streams'))}"
        line = [r["label"], str(r["packet_size"])]
        if groups:
            line.append(_streams_cell(r.get("streams")))
        if o["available"]:
            line += [_fmt(o["packets_per_s"] / 1e6), _fmt(o["payload_gbps"]), _fmt(o["cpu_s_per_mpkt"])]
            if groups:
                line += [_fmt(o.get("receiver_cpu_s_per_mpkt")), _member_cpu_text(o)]
            line += [f"{o['heaps_complete']}/{o['heaps_sent']}", _lossless_text(o)]
        else:
            line += ["n/a", "", ""] + (["", ""] if groups else []) + ["", ""]
            notes.append(f"{what}: {o['reason']}")
        if compare:
            f = r["reference"]
            ratio = r.get("ratio") or {}
            if f["available"]:
                line += [_fmt(f["packets_per_s"] / 1e6), _ratio_text(ratio, "packets_per_s"),
                         _fmt(f["cpu_s_per_mpkt"]), _ratio_text(ratio, "cpu_s_per_mpkt"),
                         _lossless_text(f), _fmt(ratio.get("lossless_packets_per_s"))]
            else:
                line += ["n/a", "", "", "", "", ""]
                notes.append(f"reference {what}: {f['reason']}")
        rows.append(line)
    out = []
    out.append(f"spead2_bench: {cfg['heap_size']}-byte heaps, {cfg['flavour']}, {cfg['heaps']} heaps per run, "
               f"on a {report['machine']['description']}")
    if groups:
        cpus = cfg.get("cpus") or []
        if not cpus:
            pin = "threads not pinned"
        elif len(cpus) == 1:
            pin = f"every thread pinned to CPU {cpus[0]}"
        else:
            pin = f"stream i's thread pinned to CPUs {','.join(map(str, cpus))} in turn (i mod {len(cpus)})"
        out.append(f"streams: plain = one ChunkRingStream, N = a ChunkStreamRingGroup of N members "
                   f"({cfg.get('eviction_mode', 'lossless').upper()}), heap i to member i mod N; "
                   f"each on a ThreadPool(1), {pin}")
    out.extend(_table(head, rows))
    if rounds > 1:
        out.append(f"{rounds} rounds (ours and the reference taking turns): values from the round with the "
                   "median Mpkt/s; x = median of the per-round ratios (lowest-highest)")
    if compare:
        out.append("x = ours / reference (Mpkt/s and lossless: higher is better; CPU: lower is better)")
    out.append("Gb/s = heap payload; lossless = highest rate without loss found by the rate search "
               "(>=: the sender's limit)")
    if groups:
        out.append("CPU = the whole receiving process; rx CPU = the streams' own threads only; "
                   "member CPU = each member's thread, in ms")
    for n in dict.fromkeys(notes):
        out.append("n/a: " + n)
    overhead = report.get("group_overhead") or []
    if overhead:
        out.append("")
        out.append("group overhead: each group / the plain ChunkRingStream on the same traffic "
                   "(median of the per-round ratios (lowest-highest); CPU: lower is better)")
        head = ["transport", "packet", "spead2", "streams", "rx CPU/pkt", "CPU/pkt", "Mpkt/s"]
        rows = []
        for e in overhead:
            rows.append([e["label"], str(e["packet_size"]), e["impl"], str(e["streams"])]
                        + [_ratio_text({"v": (e[k] or {}).get("median"), "spread": {"v": e[k]}}, "v")
                           for k in ("receiver_cpu_per_packet", "cpu_per_packet", "packets_per_s")])
        out.extend(_table(head, rows))
    return "\n".join(out)


def _table(head, rows):
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]

    def fmt_row(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [fmt_row(head), "  ".join("-" * w for w in widths)] + [fmt_row(row) for row in rows]


def plot(report, filename):
    """Payload throughput against packet size, one line per transport."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    # One line per transport and receiver (plain stream or group of N).
    groups = any(r.get("streams") is not None for r in report["results"])
    lines = list(dict.fromkeys((r["label"], r.get("streams")) for r in report["results"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    impls = [("ours", "-", "o")] + ([("reference", "--", "s")] if report["reference"] else [])
    sizes = set()
    for i, (label, streams) in enumerate(lines):
        colour = colours[i % len(colours)]
        for impl, style, marker in impls:
            rows = sorted((r for r in report["results"] if r["label"] == label and r.get("streams") == streams
                           and r[impl].get("available")),
                          key=lambda r: r["packet_size"])
            if not rows:
                continue
            sizes.update(r["packet_size"] for r in rows)
            line_label = f"{label}, {_streams_text(streams)}" if groups else label
            name = line_label if impl == "ours" else f"{line_label}, reference {report['reference']['version']}"
            ax.plot([r["packet_size"] for r in rows], [r[impl]["payload_gbps"] for r in rows], style,
                    marker=marker, color=colour, label=name)
            lossless = [(r["packet_size"], r[impl]["lossless"]["payload_gbps"]) for r in rows
                        if r[impl].get("lossless")]
            if lossless:
                ax.plot([p for p, _ in lossless], [g for _, g in lossless], ":", marker=marker,
                        markerfacecolor="none", color=colour, label=f"{name}: highest lossless rate")
    if sizes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sizes))
        ax.set_xticklabels([str(s) for s in sorted(sizes)])
    values = [line.get_ydata() for line in ax.get_lines()]
    values = [v for ys in values for v in ys if v > 0]
    if values and max(values) > 20 * min(values):
        ax.set_yscale("log")  # memory and network transports differ by orders of magnitude
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("packet size (bytes)")
    ax.set_ylabel("payload throughput (Gb/s)")
    cfg = report["config"]
    ax.set_title(f"spead2_bench: {cfg['heap_size']}-byte heaps, {cfg['flavour']}\n"
                 f"{report['machine']['description']} ({report['machine']['cpu_model']})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(filename)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Command line


def _int_list(text):
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or comma-separated list of numbers") from None
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return values


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _flavour(text):
    parts = text.upper().removeprefix("SPEAD-").split("-")
    if len(parts) != 2 or parts[0] != "64" or not parts[1].isdigit() or int(parts[1]) not in FLAVOURS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give SPEAD-64-XX with XX one of {', '.join(map(str, FLAVOURS))}")
    return int(parts[1])


def _transports(text):
    names = [n for n in text.replace(" ", "").split(",") if n]
    bad = [n for n in names if n not in TRANSPORTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown transport(s) {', '.join(bad) or text!r}; "
                                         f"choose from {', '.join(TRANSPORTS)}")
    return list(dict.fromkeys(names))


#: Most group members --streams accepts.
MAX_STREAMS = 64


def _streams(text):
    """``plain`` (one ChunkRingStream, no group) or a number of group members, or a list of them."""
    values = []
    for v in text.replace(" ", "").split(","):
        if not v:
            continue
        if v.lower() == "plain":
            values.append(None)
            continue
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{v!r}: give the number of group members (1 to {MAX_STREAMS}) or 'plain'") from None
        if not 1 <= n <= MAX_STREAMS:
            raise argparse.ArgumentTypeError(f"{v}: a group has 1 to {MAX_STREAMS} members")
        values.append(n)
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return list(dict.fromkeys(values))


def _on_off(text):
    value = text.lower()
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: give on or off")


def _pin(text):
    """on (True), off (False) or a list of CPU numbers (so "0" is CPU 0, not off)."""
    if not text.strip().replace(",", "").replace(" ", "").isdigit():
        return _on_off(text)
    try:
        cpus = _int_list(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: give on, off or a list of CPU numbers") from None
    if min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: CPU numbers are not negative")
    return cpus


def _endpoint(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def build_parser():
    p = argparse.ArgumentParser(
        prog="spead2_bench",
        description="Run one SPEAD traffic pattern through every receive transport (memory buffer, pcap "
                    "replay, kernel UDP over loopback, ibverbs) into the same chunk placement and "
                    "compare throughput, CPU cost, loss and the highest lossless rate.",
    )
    t = p.add_argument_group("traffic")
    t.add_argument("--heap-size", type=_positive_int, default=None, metavar="BYTES",
                   help="payload bytes per heap [65536; --quick: 8192]")
    t.add_argument("--packet-size", type=_int_list, action="append", default=None, metavar="BYTES[,BYTES...]",
                   help="maximum SPEAD packet size (UDP payload); repeat or give a list to sweep (the plot's "
                        "x axis) [1472]")
    t.add_argument("--heaps", type=_positive_int, default=None, metavar="N",
                   help="heaps per run [256 MiB of payload; --quick: 2 MiB]")
    t.add_argument("--flavour", type=_flavour, default=48, metavar="SPEAD-64-XX",
                   help="protocol flavour (heap address bits 24, 32, 40 or 48) [SPEAD-64-48]")
    t.add_argument("--channels", type=_positive_int, default=4, metavar="N",
                   help="heaps per timestamp (frequency channels) [4]")
    r = p.add_argument_group("what to run")
    r.add_argument("--transports", type=_transports, default=list(TRANSPORT_NAMES), metavar="LIST",
                   help=f"comma-separated subset of {','.join(TRANSPORT_NAMES)} [all]")
    r.add_argument("--rate-search", type=_on_off, default=True, metavar="on|off",
                   help="search for the highest lossless rate of the live transports [on]")
    r.add_argument("--rate-steps", type=_positive_int, default=None, metavar="N",
                   help="at most this many rate-search steps per measurement [8; --quick: 3]")
    r.add_argument("--step-time", type=_positive_float, default=None, metavar="SECONDS",
                   help="traffic per rate-search step, in seconds at the step's rate [0.5; --quick: 0.1]")
    r.add_argument("--rate-tolerance", type=_positive_float, default=0.05, metavar="FRACTION",
                   help="stop the search when the bracket is narrower than this fraction [0.05]")
    r.add_argument("--reps", type=_positive_int, default=None, metavar="N",
                   help="runs of the buffer and pcap transports; the fastest counts [5; --quick: 1]")
    r.add_argument("--rounds", type=_positive_int, default=1, metavar="N",
                   help="measure everything N times, ours and the reference taking turns, and report the "
                        "median round and the spread of the ratios [1]")
    r.add_argument("--quick", action="store_true", help="tiny sizes and a short rate search (for tests)")
    g = p.add_argument_group("chunk stream groups")
    g.add_argument("--streams", type=_streams, default=None, metavar="N[,N...]",
                   help="receive into a ChunkStreamRingGroup of N members (heap i goes to member i mod N: "
                        "N buffers, N capture files, N UDP ports, N ibverbs endpoints); 'plain' is one "
                        "ChunkRingStream, the default; a list such as plain,1,2,4 measures each in turn")
    g.add_argument("--eviction-mode", choices=("lossless", "lossy"), default="lossless", type=str.lower,
                   help="the groups' eviction mode [lossless]")
    g.add_argument("--pin", type=_pin, default=True, metavar="on|off|CPU[,CPU...]",
                   help="pin the thread of stream (member) i to the i-th CPU the benchmark may use, or of "
                        "the list given, cyclically; a plain stream gets the first [on]")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write the results as JSON (- for standard output)")
    o.add_argument("--plot", metavar="FILE.png",
                   help="plot payload throughput against packet size per transport (needs matplotlib)")
    c = p.add_argument_group("reference")
    c.add_argument("--compare-reference", action="store_true",
                   help=f"also run everything with the reference spead2 {REF_VERSION} and add ratio columns")
    c.add_argument("--ref-venv", metavar="PATH", default=None,
                   help="virtualenv of the reference, created on demand [$SPEAD2_BENCH_REF_VENV, else "
                        f"{os.path.join(cache_dir(), 'ref-' + REF_VERSION)}]")
    c.add_argument("--ref-python", metavar="PATH", default=None, help=argparse.SUPPRESS)
    i = p.add_argument_group("ibverbs")
    i.add_argument("--ibv-interface", metavar="ADDR",
                   help="IPv4 address of a real RDMA-capable interface; without it the emulated device is used")
    i.add_argument("--ibv-endpoint", type=_endpoint, metavar="HOST:PORT",
                   help="address the ibverbs receiver listens on (a multicast group, or the interface "
                        "address) [ADDR:7148]")
    i.add_argument("--ibv-buffer-size", type=_positive_int, default=16 << 20, metavar="BYTES",
                   help="ibverbs receive buffer [16 MiB]")
    i.add_argument("--ibv-emulator", metavar="PATH",
                   help="the emulated device: libspead2_ibv_emulator.so, or a tests/ibv_emulator directory to "
                        "build it from [the one in the package, else the source tree's, built into the cache]")
    i.add_argument("--send-interface", metavar="ADDR", default=None,
                   help="local address the sender sends from (for a real device: the other port) [any]")
    m = p.add_argument_group("files")
    m.add_argument("--tmpdir", metavar="DIR", help="where the traffic files go [the system's temp dir]")
    m.add_argument("--keep-traffic", action="store_true", help="keep the traffic files and worker logs")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sender", action="store_true", help=argparse.SUPPRESS)
    return p


def _finish_args(parser, args):
    q = args.quick
    if args.heap_size is None:
        args.heap_size = 8192 if q else 65536
    if args.packet_size is None:
        args.packet_sizes = [1472]
    else:
        args.packet_sizes = sorted(dict.fromkeys(v for group in args.packet_size for v in group))
    if args.heaps is None:
        args.heaps = max(16, ((2 << 20) if q else (256 << 20)) // args.heap_size)
    if args.rate_steps is None:
        args.rate_steps = 3 if q else 8
    if args.step_time is None:
        args.step_time = 0.1 if q else 0.5
    if args.reps is None:
        args.reps = 1 if q else 5
    args.stream_list = args.streams or [None]
    if isinstance(args.pin, list):
        try:
            allowed = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            allowed = set(args.pin)
        bad = [c for c in args.pin if c not in allowed]
        if bad:
            parser.error(f"--pin: CPU {', '.join(map(str, bad))} is not one this process may run on "
                         f"({', '.join(map(str, sorted(allowed)))})")
    if not args.rate_tolerance < 1:
        parser.error("--rate-tolerance must be below 1")
    for size in args.packet_sizes:
        try:
            Traffic(args.heap_size, size, args.heaps, args.flavour, args.channels).check()
        except ValueError as exc:
            parser.error(str(exc))
    if args.ref_venv is None:
        from spead2.tools import reference as _reference

        args.ref_venv = os.environ.get("SPEAD2_BENCH_REF_VENV") or _reference.default_venv()
    if args.ibv_endpoint and not args.ibv_interface:
        parser.error("--ibv-endpoint needs --ibv-interface (the emulated device has its own endpoint)")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            parser.error("--plot needs matplotlib (pip install 'spead2[bench]' or pip install matplotlib)")
        if not args.plot.lower().endswith(".png"):
            parser.error("--plot FILE must end in .png")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    if args.sender:
        return sender_main()
    _finish_args(parser, args)
    progress = Progress(sys.stderr.isatty())
    try:
        report = run_all(args, progress)
    except BenchError as exc:
        progress.note(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        progress.note("interrupted")
        return 130
    table = format_table(report)
    if args.json == "-":
        print(table, file=sys.stderr)
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(table)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
                f.write("\n")
    if args.plot:
        plot(report, args.plot)
    failed = any(r[impl].get("failed") for r in report["results"] for impl in ("ours", "reference") if impl in r)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
