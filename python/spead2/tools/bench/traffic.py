"""The traffic of a benchmark: its description (:class:`Traffic`) and its
generation into files (the packets back to back, their lengths, a pcap
capture).  Shared by the driver and the worker and sender subprocesses."""

from __future__ import annotations

import os
import struct


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


def wrap_frame(packet, seq, dst_port=FRAME_DST_PORT):
    """``packet`` in an Ethernet/IPv4/UDP frame, as in the generated pcap file."""
    udp = struct.pack(">HHHH", FRAME_SRC_PORT, dst_port, 8 + len(packet), 0)
    ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28 + len(packet), seq & 0xFFFF, 0x4000, 64, 17, 0,
                               FRAME_IP, FRAME_IP))
    total = sum(struct.unpack(">10H", bytes(ip)))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    ip[10:12] = struct.pack(">H", ~total & 0xFFFF)
    return FRAME_DST_MAC + FRAME_SRC_MAC + b"\x08\x00" + bytes(ip) + udp + packet





def item_pointer(item_id, value, addr_bits, immediate=True):
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
                words[:, 1] = np.uint64(item_pointer(HEAP_CNT_ID, 0, bits)) | (heap_idx + np.uint64(1))
                words[:, 2] = item_pointer(HEAP_LENGTH_ID, t.heap_size, bits)
                words[:, 3] = item_pointer(PAYLOAD_OFFSET_ID, j * t.payload_per_packet, bits)
                words[:, 4] = item_pointer(PAYLOAD_LENGTH_ID, pay[j], bits)
                words[:, 5] = np.uint64(item_pointer(TIMESTAMP_ID, 0, bits)) | ts
                words[:, 6] = np.uint64(item_pointer(FREQUENCY_ID, 0, bits)) | freq
                words[:, 7] = item_pointer(DATA_ID, 0, bits, immediate=False)
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



def member_share(total, n, m):
    """How many of items 0 .. total-1 have index m modulo n."""
    return max(0, (total - m + n - 1) // n)
