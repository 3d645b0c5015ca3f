"""The sender subprocess (``python -c`` with :data:`.session.LOADER`): it
replays the generated packets over UDP, as they are or (for the emulated
ibverbs wire) as Ethernet frames, to one or more destinations, optionally at
a fixed rate, with UDP GSO where the kernel has it.  Standard library and
numpy only."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import sys
import time

from .session import serve
from .traffic import (CTRL_STREAM_STOP, FRAME_DST_PORT, FRAME_OVERHEAD, HEAP_CNT_ID, HEAP_LENGTH_ID,
                      PAYLOAD_LENGTH_ID, PAYLOAD_OFFSET_ID, STREAM_CTRL_ID, item_pointer, member_share, wrap_frame)


UDP_SEGMENT = 103  # from <linux/udp.h>
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000


class Sender:
    """The sender's state (the traffic loaded for sending) and its requests (``cmd_*``)."""

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
            limits = [member_share(n_packets // ppp, n_dest, m) * ppp for m in range(n_dest)]
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
        words = [item_pointer(HEAP_CNT_ID, req["heap_cnt"], bits), item_pointer(HEAP_LENGTH_ID, 0, bits),
                 item_pointer(PAYLOAD_OFFSET_ID, 0, bits), item_pointer(PAYLOAD_LENGTH_ID, 0, bits),
                 item_pointer(STREAM_CTRL_ID, CTRL_STREAM_STOP, bits)]
        packet = struct.pack(">BBBBHH", 0x53, 4, (64 - bits) // 8, bits // 8, 0, len(words))
        packet += struct.pack(f">{len(words)}Q", *words)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            if req.get("bind"):
                sock.bind((req["bind"], 0))
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            for m, dest in enumerate(req["dests"]):
                data = wrap_frame(packet, 0, FRAME_DST_PORT + m) if req["mode"] == "frames" else packet
                with contextlib.suppress(ConnectionRefusedError):
                    sock.sendto(data, tuple(dest))
        return {}

    def serve(self):
        serve(self)
        return 0


def main():
    return Sender().serve()
