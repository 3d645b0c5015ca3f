"""Receive SPEAD traffic and report what arrived: heap by heap (items and
values), or into chunks with a built-in placement.

Usage::

    spead2_recv [options] SOURCE [SOURCE ...]
    python -m spead2.tools.recv ...

Two modes:

heap mode (``--heaps``; the default when no chunk option is given)
    Like the reference's ``spead2_recv``: every source is a
    :class:`spead2.recv.Stream` of its own (``--joint``: one for all), and
    each heap is printed as ``Received heap CNT on stream SOURCE`` followed by
    the names of the items it updated (``--values``: ``name = value``;
    ``--descriptors``: each descriptor in full).  When a stream ends,
    ``Shutting down stream SOURCE after N heaps`` and its statistics.
chunk mode (``--chunks``; the default as soon as any option of the
    placement group, ``--max-chunks``, ``--ring``, ``--streams``,
    ``--eviction`` or ``--cores`` is given)
    Heaps are placed into chunks as described below and one line per chunk
    is printed, then a summary.

``--tcp`` makes every HOST:PORT source a TCP listener instead of a UDP
socket, in either mode.

A SOURCE is one of

* ``HOST:PORT`` (or just ``PORT``, or ``[IPV6]:PORT``): a UDP socket bound
  to that address (an empty host binds every local address);
* ``GROUP:PORT`` where GROUP is an IPv4 or IPv6 multicast address: the group
  is joined, on ``--interface`` (IPv4) or ``--interface-index`` (IPv6);
* the name of an existing file: a pcap/pcapng capture, replayed.

In chunk mode, network sources all feed one stream.  Capture files cannot be
mixed with network sources; several files are replayed one after the other,
each into a stream of its own (a capture ends its stream when it ends).

In chunk mode heaps go into chunks with a built-in placement:

``--place timestamp`` (the default)
    A heap carries a timestamp item (``--timestamp-id``, 0x1600) and a
    channel item (``--channel-id``, 0x4103).  With ``t = (timestamp -
    first_timestamp) // timestamp_step`` and ``c = channel // channel_step``
    (``c < channels``), a chunk holds ``heaps_per_chunk / channels``
    consecutive values of ``t``, each with ``channels`` heaps.  The defaults
    match what ``spead2_send`` sends.
``--place cnt``
    By heap counter: ``p = (heap_cnt - cnt_first) / cnt_step`` gives chunk
    ``p // heaps_per_chunk``, slot ``p % heaps_per_chunk``.

Heaps whose length is not ``--heap-size`` (descriptors, the end-of-stream
heap) or whose items do not fit are rejected (counted in ``rejected_heaps``).

One line per chunk is printed (``--json``: one JSON object per line), then a
summary with every stream statistic.  On a terminal a progress line is kept
up to date on stderr.  The program stops at the end of the stream (an
end-of-stream heap, or the end of the captures), after ``--duration``
seconds, or on Ctrl-C (SIGINT) or SIGTERM, and then prints the summary and
exits with status 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

import spead2
import spead2.recv

from . import _cli

DEFAULT_TIMESTAMP_ID = 0x1600
DEFAULT_CHANNEL_ID = 0x4103
DEFAULT_HEAP_SIZE = 8192
DEFAULT_CHANNELS = 4
DEFAULT_HEAPS_PER_CHUNK_CNT = 16
DEFAULT_MAX_CHUNKS = 4
# Memory pool of heap mode (--mem-pool): the reference's spead2_recv defaults.
DEFAULT_MEM_LOWER = 16384
DEFAULT_MEM_UPPER = 32 * 1024 * 1024
DEFAULT_MEM_MAX_FREE = 12
DEFAULT_MEM_INITIAL = 8
#: Options that only chunk mode has: giving one chooses chunk mode.
CHUNK_OPTIONS = ("place", "heap_size", "heaps_per_chunk", "timestamp_id", "channel_id", "channels",
                 "channel_step", "timestamp_step", "first_timestamp", "cnt_first", "cnt_step", "verify",
                 "max_chunks", "ring", "streams", "eviction", "cores", "live")
#: Options that only heap mode has.
HEAP_OPTIONS = ("descriptors", "values", "joint", "count", "ring_heaps", "mem_pool", "mem_lower", "mem_upper",
                "mem_max_free", "mem_initial")
#: Chunks whose presence is shown as a bitmap in text output (larger: count only).
BITMAP_LIMIT = 64
#: How often the progress line is redrawn (seconds).
PROGRESS_INTERVAL = 0.5
#: Longest wait in the main loop (seconds): bounds the reaction time to --duration.
POLL_INTERVAL = 0.5

PROG = "spead2_recv"


# ---------------------------------------------------------------------------
# Sources


@dataclass
class Source:
    kind: str  # "udp", "multicast4", "multicast6" or "file"
    text: str
    host: str = ""
    port: int = 0
    path: str = ""


def parse_source(text: str) -> Source:
    """Classify one command-line source (raises ValueError with a message)."""
    if os.path.isfile(text):
        return Source("file", text, path=text)
    if text.isdigit():
        host, port_text = "", text
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
    else:
        raise ValueError(f"{text!r} is neither an existing file nor HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        if os.path.sep in text or "." in port_text:
            raise ValueError(f"{text!r}: no such file")
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    port = int(port_text)
    try:
        address = ipaddress.ip_address(host) if host else None
    except ValueError:
        address = None  # a host name: resolved by the reader
    if address is not None and address.is_multicast:
        kind = "multicast4" if address.version == 4 else "multicast6"
        return Source(kind, text, host=host, port=port)
    return Source("udp", text, host=host, port=port)


# ---------------------------------------------------------------------------
# Placement


@dataclass
class Layout:
    """Everything the place callback and the reporting need."""

    place: str
    heap_size: int
    heaps_per_chunk: int
    # timestamp placement
    timestamp_id: int = DEFAULT_TIMESTAMP_ID
    channel_id: int = DEFAULT_CHANNEL_ID
    channels: int = 1
    channel_step: int = 1
    timestamp_step: int = 1
    first_timestamp: int = 0
    # cnt placement
    cnt_first: int = 1
    cnt_step: int = 1

    @property
    def timestamps_per_chunk(self) -> int:
        return self.heaps_per_chunk // self.channels

    @property
    def items(self) -> List[int]:
        if self.place == "cnt":
            return [spead2.HEAP_CNT_ID, spead2.HEAP_LENGTH_ID]
        return [self.timestamp_id, self.channel_id, spead2.HEAP_LENGTH_ID]

    @property
    def key_name(self) -> str:
        return "cnt" if self.place == "cnt" else "timestamp"


def _placement(layout: Layout, module):
    """The placement for `layout` from `module`: spead2.recv.place (built
    in, C++) or spead2.recv.numba_place (numba), which take the same
    arguments and place heaps the same way.  Each placed heap also writes
    its key (heap counter or timestamp) into its 8-byte slot of ``chunk.extra``."""
    if layout.place == "cnt":
        return module.heap_counter(heap_size=layout.heap_size, heaps_per_chunk=layout.heaps_per_chunk,
                                   cnt_first=layout.cnt_first, cnt_step=layout.cnt_step, extra=True)
    return module.timestamp_channel(
        heap_size=layout.heap_size, channels=layout.channels, channel_step=layout.channel_step,
        timestamp_step=layout.timestamp_step, timestamps_per_chunk=layout.timestamps_per_chunk,
        first_timestamp=layout.first_timestamp, timestamp_id=layout.timestamp_id, channel_id=layout.channel_id,
        extra=True)


def make_builtin_place(layout: Layout):
    """The built-in (C++) placement for `layout` (spead2.recv.place), the one spead2_recv uses."""
    import spead2.recv.place

    return _placement(layout, spead2.recv.place)


def make_place_callback(layout: Layout):
    """The same placement as a numba callback (spead2.recv.numba_place; needs numba and scipy)."""
    from spead2.recv import numba_place

    return _placement(layout, numba_place)


def send_heap_index(layout: Layout, keys: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """spead2_send's index ``i`` of the heaps with timestamps `keys` in
    chunk slots `slots` (timestamp placement)."""
    t = (keys - layout.first_timestamp) // layout.timestamp_step
    return t * layout.channels + slots % layout.channels


# ---------------------------------------------------------------------------
# Reporting


class Report:
    """Per-chunk lines, the progress line and the summary."""

    def __init__(self, layout: Layout, args, out=None, err=None):
        out = sys.stdout if out is None else out
        err = sys.stderr if err is None else err
        self.layout = layout
        self.json = args.json
        self.quiet = args.quiet
        self.verify = args.verify
        self.out = out
        self.err = err
        #: --live: a refreshing view of every stream, the rings and the group
        #: (or, with --json, "live" records); replaces the chunk lines.
        self.live = getattr(args, "live", False)
        self.progress = not args.quiet and _isatty(err) and not self.live
        self.start = time.monotonic()
        self.chunks = 0
        self.complete_chunks = 0
        self.heaps_placed = 0
        self.heap_slots = 0
        self.verified = 0
        self.corrupt = 0
        self._ramp = None
        #: Empty chunks before the first heap: the window back-fills chunk IDs
        #: from 0 (or from where it was) up to the first heap's chunk.
        self.leading_empty = 0
        self._stream_placed = 0
        self._progress_shown = False
        self._last_progress = 0.0
        self._last_sample = (self.start, 0, 0)  # time, packets, heaps placed
        self._rate = (0.0, 0.0)
        self._live_lines = 0
        self._live_last = 0.0
        self._live_packets = {}   # stream index -> (time, packets)

    # -- chunks
    def begin_stream(self):
        self._stream_placed = 0

    def chunk(self, chunk, source_name=None):
        present = np.asarray(chunk.present)
        n = int(np.count_nonzero(present))
        hpc = self.layout.heaps_per_chunk
        if n == 0 and self._stream_placed == 0:
            self.leading_empty += 1
            return
        self.chunks += 1
        self._stream_placed += n
        self.heaps_placed += n
        self.heap_slots += hpc
        if n == hpc:
            self.complete_chunks += 1
        first_key = None
        if n:
            keys = np.asarray(chunk.extra)[present != 0]
            first_key = int(keys.min())
        if self.verify and n:
            self._verify(chunk, present)
        if self.quiet or self.live:
            return
        percent = 100.0 * n / hpc
        if self.json:
            record = {
                "type": "chunk",
                "chunk_id": int(chunk.chunk_id),
                "heaps": n,
                "heaps_per_chunk": hpc,
                "complete": round(percent, 3),
                "present": "".join("1" if p else "0" for p in present),
                f"first_{self.layout.key_name}": first_key,
            }
            if source_name is not None:
                record["source"] = source_name
            line = json.dumps(record)
        else:
            line = f"chunk {chunk.chunk_id}: {n}/{hpc} heaps ({percent:.1f}%)"
            if hpc <= BITMAP_LIMIT:
                line += " [" + "".join("#" if p else "." for p in present) + "]"
            if first_key is not None:
                line += f" first {self.layout.key_name} {first_key}"
        self._clear_progress()
        print(line, file=self.out)

    def flush(self):
        self.out.flush()

    def _verify(self, chunk, present):
        """Check the payloads against spead2_send's pattern: byte j of its
        heap i is (i + j) % 256, so payload minus (j % 256) is i % 256 everywhere."""
        size = self.layout.heap_size
        slots = np.flatnonzero(present)
        rows = np.asarray(chunk.data).reshape(-1, size)[slots]
        if self._ramp is None:
            self._ramp = np.arange(size, dtype=np.int64).astype(np.uint8)
        i = send_heap_index(self.layout, np.asarray(chunk.extra)[slots], slots)
        good = np.all((rows - self._ramp) == (i % 256).astype(np.uint8)[:, None], axis=1)
        n_good = int(np.count_nonzero(good))
        self.verified += n_good
        self.corrupt += len(slots) - n_good

    # -- live view
    def live_snapshot(self, stream):
        """What --live shows: per stream (group member) counts and rates,
        the rings and, for a group, its window."""
        now = time.monotonic()
        members = list(getattr(stream, "members", None) or [stream])
        rows = []
        for i, m in enumerate(members):
            st = m.stats
            t0, p0 = self._live_packets.get(i, (self.start, 0))
            rate = (st["packets"] - p0) / (now - t0) if now > t0 else 0.0
            self._live_packets[i] = (now, st["packets"])
            rows.append({"stream": i, "packets_per_s": round(rate, 1), "packets": st["packets"],
                         "heaps": st["heaps"], "evicted": st["incomplete_heaps_evicted"],
                         "too_old": st.get("too_old_heaps", 0), "rejected": st.get("rejected_heaps", 0),
                         "out_of_range": st.get("out_of_range_heaps", 0),
                         "malformed": st.get("malformed_packets", 0)})
        rings = {}
        for name in ("data", "free"):
            ring = getattr(stream, name + "_ringbuffer", None)
            if ring is not None:
                rings[name] = {"size": ring.qsize(), "capacity": ring.maxsize,
                               "high_water_mark": ring.high_water_mark,
                               "blocked_puts": ring.blocked_puts, "blocked_gets": ring.blocked_gets}
        snapshot = {"type": "live", "elapsed": round(now - self.start, 3), "chunks": self.chunks,
                    "complete_chunks": self.complete_chunks, "heaps_placed": self.heaps_placed,
                    "streams": rows, "rings": rings}
        health = getattr(stream, "health", None)
        if health is not None:
            snapshot["group"] = dict(health)
        return snapshot

    def live_tick(self, stream, force=False):
        now = time.monotonic()
        if not force and now - self._live_last < PROGRESS_INTERVAL:
            return
        self._live_last = now
        snap = self.live_snapshot(stream)
        if self.json:
            print(json.dumps(snap), file=self.out, flush=True)
            return
        total_rate = sum(r["packets_per_s"] for r in snap["streams"])
        lines = [f"{snap['elapsed']:8.1f} s  {total_rate:10.0f} pkt/s  chunks {snap['chunks']} "
                 f"({snap['complete_chunks']} complete)  heaps placed {snap['heaps_placed']}",
                 f"  {'stream':>6} {'pkt/s':>10} {'packets':>11} {'heaps':>9} {'evicted':>8} {'too_old':>8} "
                 f"{'rejected':>9} {'out_of_range':>12} {'malformed':>10}"]
        for r in snap["streams"]:
            lines.append(f"  {r['stream']:>6} {r['packets_per_s']:>10.0f} {r['packets']:>11} {r['heaps']:>9} "
                         f"{r['evicted']:>8} {r['too_old']:>8} {r['rejected']:>9} {r['out_of_range']:>12} "
                         f"{r['malformed']:>10}")
        ring_text = []
        for name, r in snap["rings"].items():
            waits = r["blocked_puts"] if name == "data" else r["blocked_gets"]
            ring_text.append(f"{name} ring {r['size']}/{r['capacity']} (high {r['high_water_mark']}, "
                             f"worker waited {waits}x)")
        if "group" in snap:
            g = snap["group"]
            ring_text.append(f"window {g['chunks_in_window']} chunks, {g['lossy_flushes']} lossy flushes, "
                             f"{g['member_waits']} waits")
        lines.append("  " + "   ".join(ring_text))
        terminal = _isatty(self.err)
        if terminal and self._live_lines:
            self.err.write(f"\x1b[{self._live_lines}F")   # back to the first line of the last view
        for line in lines:
            self.err.write(line + ("\x1b[K" if terminal else "") + "\n")
        if not terminal:
            self.err.write("\n")
        self.err.flush()
        self._live_lines = len(lines) if terminal else 0

    # -- progress
    def tick(self, stream, force=False):
        if self.live:
            self.live_tick(stream, force)
            return
        if not self.progress:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL:
            return
        self._last_progress = now
        stream_stats = stream.stats
        packets = stream_stats["packets"] if stream_stats is not None else 0
        t0, p0, h0 = self._last_sample
        if now > t0:
            self._rate = ((packets - p0) / (now - t0), (self.heaps_placed - h0) * self.layout.heap_size / (now - t0))
        self._last_sample = (now, packets, self.heaps_placed)
        missing = self.heap_slots - self.heaps_placed
        malformed = stream_stats.get("malformed_packets", 0) if stream_stats is not None else 0
        text = (f"{now - self.start:7.1f} s  {self._rate[1] * 8e-9:7.3f} Gb/s  {self._rate[0]:9.0f} pkt/s  "
                f"chunks {self.chunks}  heaps {self.heaps_placed}  missing {missing}  malformed {malformed}")
        self.err.write("\r" + text + "\x1b[K")
        self.err.flush()
        self._progress_shown = True

    def _clear_progress(self):
        if self._progress_shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._progress_shown = False

    # -- summary
    def summary(self, stats, stopped_by, sources, per_member=None):
        self._clear_progress()
        elapsed = time.monotonic() - self.start
        names = list(stats.keys()) if stats is not None else []
        values = {name: int(stats[name]) for name in names}
        if self.json:
            record = {
                "type": "summary",
                "stopped_by": stopped_by,
                "elapsed": round(elapsed, 6),
                "chunks": self.chunks,
                "complete_chunks": self.complete_chunks,
                "heaps_placed": self.heaps_placed,
                "heap_slots": self.heap_slots,
                "bytes_placed": self.heaps_placed * self.layout.heap_size,
                "leading_empty_chunks": self.leading_empty,
                "sources": sources,
                "stats": values,
            }
            if per_member is not None:
                record["member_stats"] = [{name: int(m[name]) for name in m.keys()} for m in per_member]
            if self.verify:
                record["verified_heaps"] = self.verified
                record["corrupt_heaps"] = self.corrupt
            print(json.dumps(record), file=self.out, flush=True)
            return
        percent = 100.0 * self.heaps_placed / self.heap_slots if self.heap_slots else 0.0
        lines = [
            f"Summary ({stopped_by}):",
            f"  elapsed          {elapsed:.3f} s",
            f"  chunks           {self.chunks} ({self.complete_chunks} complete)",
            f"  heaps in chunks  {self.heaps_placed}/{self.heap_slots} ({percent:.1f}%)",
            f"  bytes placed     {self.heaps_placed * self.layout.heap_size}",
        ]
        if self.leading_empty:
            lines.append(f"  (not shown: {self.leading_empty} empty chunks before the first heap)")
        if self.verify:
            lines.append(f"  verified heaps   {self.verified} ({self.corrupt} corrupt)")
        lines.append("Stream statistics:")
        width = max((len(n) for n in names), default=0)
        if per_member is None:
            lines.extend(f"  {name:<{width}}  {values[name]}" for name in names)
        else:
            header = "".join(f"  {'stream ' + str(i):>12}" for i in range(len(per_member)))
            lines.append(f"  {'':<{width}}  {'total':>12}{header}")
            for name in names:
                cells = "".join(f"  {int(m[name]):>12}" for m in per_member)
                lines.append(f"  {name:<{width}}  {values[name]:>12}{cells}")
        if values.get("rejected_heaps", 0) and not self.heaps_placed:
            lines.append(f"note: every heap was rejected by the placement: check --place, --heap-size "
                         f"({self.layout.heap_size}) and the item IDs / steps")
        print("\n".join(lines), file=self.out, flush=True)


def _isatty(f) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------
# Receiving


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag and a wake-up of the main loop."""

    def __init__(self):
        self.reason: Optional[str] = None
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._old = {}
        self._old_wakeup = None

    @property
    def fd(self):
        return self._read_fd

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled in the main thread (main() called from elsewhere)
        self._old_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.reason = "signal " + signal.Signals(signum).name
        # A second Ctrl-C while stopping interrupts for real.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def drain(self):
        try:
            while os.read(self._read_fd, 512):
                pass
        except BlockingIOError:
            pass

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
        os.close(self._read_fd)
        os.close(self._write_fd)


def _add_free_chunks(target, layout: Layout, n_chunks: int):
    hpc = layout.heaps_per_chunk
    for _ in range(n_chunks):
        target.add_free_chunk(spead2.recv.Chunk(
            present=np.zeros(hpc, np.uint8),
            data=np.zeros(hpc * layout.heap_size, np.uint8),
            extra=np.zeros(hpc, np.int64)))


def _rings(args, members=1):
    ring_depth = args.ring if args.ring else args.max_chunks
    # The window, the data ring, one chunk being consumed and one being
    # allocated per member.
    n_chunks = args.max_chunks + ring_depth + 1 + members
    return spead2.recv.ChunkRingbuffer(ring_depth), spead2.recv.ChunkRingbuffer(n_chunks), n_chunks


def build_stream(layout: Layout, args, place):
    pool = spead2.ThreadPool(args.threads)
    config = spead2.recv.StreamConfig(max_heaps=args.max_heaps)
    if args.memcpy_nt:
        config.memcpy = spead2.MEMCPY_NONTEMPORAL
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=layout.items, max_chunks=args.max_chunks, place=place, max_heap_extra=8)
    data_ring, free_ring, n_chunks = _rings(args)
    stream = spead2.recv.ChunkRingStream(pool, config, chunk_config, data_ring, free_ring)
    _add_free_chunks(stream, layout, n_chunks)
    return stream


class GroupReceiver:
    """A ChunkStreamRingGroup of ``--streams`` members, each on its own thread
    pool, seen by the rest of this tool as one stream."""

    def __init__(self, layout: Layout, args, place):
        mode = spead2.recv.ChunkStreamGroupConfig.EvictionMode
        config = spead2.recv.ChunkStreamGroupConfig(
            max_chunks=args.max_chunks,
            eviction_mode=mode.LOSSLESS if args.eviction == "lossless" else mode.LOSSY)
        data_ring, free_ring, n_chunks = _rings(args, args.streams)
        self.group = spead2.recv.ChunkStreamRingGroup(config, data_ring, free_ring)
        chunk_config = spead2.recv.ChunkStreamConfig(
            items=layout.items, max_chunks=args.max_chunks, place=place, max_heap_extra=8)
        for i in range(args.streams):
            pool = spead2.ThreadPool(args.threads, [args.cores[i]]) if args.cores else spead2.ThreadPool(args.threads)
            self.group.emplace_back(pool, spead2.recv.StreamConfig(max_heaps=args.max_heaps, stream_id=i),
                                    chunk_config)
        _add_free_chunks(self.group, layout, n_chunks)

    @property
    def members(self):
        return list(self.group)

    @property
    def data_ringbuffer(self):
        return self.group.data_ringbuffer

    @property
    def free_ringbuffer(self):
        return self.group.free_ringbuffer

    @property
    def health(self):
        return self.group.health

    def add_free_chunk(self, chunk):
        self.group.add_free_chunk(chunk)

    def stop(self):
        self.group.stop()

    @property
    def stats(self):
        """The members' statistics added together."""
        stats = [m.stats for m in self.group]
        return sum(stats[1:], stats[0])


def split(items, n):
    """Deal ``items`` round-robin into ``n`` lists."""
    return [items[i::n] for i in range(n)]


def add_network_readers(stream, sources, args):
    udp = [s for s in sources if s.kind != "file"]
    if not udp:
        return
    if args.ibv:
        # A build without ibverbs raises from add_udp_ibv_reader, saying so.
        config_cls = spead2.recv.UdpIbvConfig
        if not args.interface:
            raise RuntimeError("--ibv needs --interface (the IPv4 address of the NIC)")
        if any(s.kind == "multicast6" or ":" in s.host for s in udp):
            raise RuntimeError("--ibv supports IPv4 only")
        kwargs = dict(endpoints=[(s.host, s.port) for s in udp], interface_address=args.interface,
                      comp_vector=args.ibv_vector)
        if args.max_size is not None:
            kwargs["max_size"] = args.max_size
        if args.buffer is not None:
            kwargs["buffer_size"] = args.buffer
        stream.add_udp_ibv_reader(config_cls(**kwargs))
        return
    cls = spead2.recv.ChunkRingStream
    if args.tcp:
        max_size = args.max_size if args.max_size is not None else cls.DEFAULT_TCP_MAX_SIZE
        buffer = args.buffer if args.buffer is not None else cls.DEFAULT_TCP_BUFFER_SIZE
        for s in udp:
            if s.kind != "udp":
                raise RuntimeError(f"{s.text}: --tcp cannot receive from a multicast group")
            stream.add_tcp_reader(s.port, max_size, buffer, bind_hostname=s.host)
        return
    max_size = args.max_size if args.max_size is not None else cls.DEFAULT_UDP_MAX_SIZE
    buffer = args.buffer if args.buffer is not None else cls.DEFAULT_UDP_BUFFER_SIZE
    for s in udp:
        if s.kind == "multicast4":
            stream.add_udp_reader(s.host, s.port, max_size, buffer,
                                  interface_address=args.interface or "0.0.0.0")
        elif s.kind == "multicast6":
            stream.add_udp_reader(s.host, s.port, max_size, buffer, interface_index=args.interface_index)
        else:
            stream.add_udp_reader(s.port, max_size, buffer, bind_hostname=s.host)


def run_stream(stream, report: Report, stop: StopRequest, deadline: Optional[float], source_name=None) -> str:
    """Consume chunks until the stream ends, a signal or the deadline; returns why it ended."""
    ring = stream.data_ringbuffer
    stopped_by = "end of stream"
    stopping = False
    report.begin_stream()
    while True:
        if not stopping:
            if stop.reason is not None:
                stopped_by = stop.reason
            elif deadline is not None and time.monotonic() >= deadline:
                stopped_by = "duration"
            if stopped_by != "end of stream":
                stopping = True
                stream.stop()  # chunks already in the data ring are still drained below
        try:
            chunk = ring.get_nowait()
        except spead2.Empty:
            # Nothing to do: show what we have, then sleep until a chunk, a
            # signal, the deadline or the next progress update.
            report.flush()
            report.tick(stream)
            timeout = 0.05 if stopping else POLL_INTERVAL
            if deadline is not None and not stopping:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            if report.progress or report.live:
                timeout = min(timeout, PROGRESS_INTERVAL)
            try:
                select.select([ring.data_fd, stop.fd], [], [], timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for safety
                pass
            stop.drain()
            continue
        except spead2.Stopped:
            break
        # Chunk lines are flushed when the ring runs dry, not one by one: a
        # write per chunk would slow the consumer down, and a slow consumer
        # stalls the stream.
        report.chunk(chunk, source_name)
        stream.add_free_chunk(chunk)
        report.tick(stream)
    report.flush()
    if report.live:
        report.tick(stream, force=True)   # the final state, also for runs shorter than one refresh
    return stopped_by


def receive(args, layout: Layout, sources: List[Source], stop: StopRequest, out=None, err=None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    place = make_builtin_place(layout)
    report = Report(layout, args, out, err)
    deadline = time.monotonic() + args.duration if args.duration is not None else None
    files = [s for s in sources if s.kind == "file"]
    total = None
    stopped_by = "end of stream"
    if args.streams:
        # One group: source i goes to member i % N, all at once.
        receiver = GroupReceiver(layout, args, place)
        for member, part in zip(receiver.members, split(sources, args.streams)):
            for s in part:
                if s.kind == "file":
                    member.add_udp_pcap_file_reader(s.path, args.filter)
            add_network_readers(member, [s for s in part if s.kind != "file"], args)
        if not args.quiet and not files:
            print(f"{PROG}: receiving from {', '.join(s.text for s in sources)} with {args.streams} streams "
                  "(Ctrl-C to stop)", file=err, flush=True)
        stopped_by = run_stream(receiver, report, stop, deadline)
        receiver.stop()
        total = receiver.stats
        per_member = [m.stats for m in receiver.members]
    elif files:
        per_member = None
        for s in files:
            stream = build_stream(layout, args, place)
            stream.add_udp_pcap_file_reader(s.path, args.filter)
            stopped_by = run_stream(stream, report, stop, deadline, s.path if len(files) > 1 else None)
            stream.stop()
            total = stream.stats if total is None else total + stream.stats
            if stopped_by != "end of stream":
                break
    else:
        per_member = None
        stream = build_stream(layout, args, place)
        add_network_readers(stream, sources, args)
        if not args.quiet:
            print(f"{PROG}: receiving from {', '.join(s.text for s in sources)} (Ctrl-C to stop)",
                  file=err, flush=True)
        stopped_by = run_stream(stream, report, stop, deadline)
        stream.stop()
        total = stream.stats
    report.summary(total, stopped_by, [s.text for s in sources], per_member)
    return 0


# ---------------------------------------------------------------------------
# Heap mode


class HeapPrinter:
    """Prints heaps as the reference's spead2_recv does (text), or one JSON
    object per heap and per finished stream (``--json``)."""

    def __init__(self, args, out):
        self.args = args
        self.out = out

    def heap(self, name, heap, item_group):
        args = self.args
        lines = [] if args.json else [f"Received heap {heap.cnt} on stream {name}"]
        record = {"type": "heap", "stream": name, "cnt": heap.cnt}
        try:
            if args.descriptors:
                descriptors = []
                for raw in heap.get_descriptors():
                    d = spead2.Descriptor.from_raw(raw, heap.flavour)
                    descriptors.append({"name": d.name, "id": d.id, "description": d.description,
                                        "format": None if d.format is None else [list(f) for f in d.format],
                                        "dtype": None if d.dtype is None else str(d.dtype),
                                        "shape": list(d.shape)})
                    if not args.json:
                        lines.append(f"    Descriptor for {d.name} ({d.id:#x})\n"
                                     f"      description: {d.description}\n"
                                     f"      format:      {d.format}\n"
                                     f"      dtype:       {d.dtype}\n"
                                     f"      shape:       {d.shape}")
                record["descriptors"] = descriptors
            changed = item_group.update(heap)
            if args.values:
                record["items"] = {key: _json_value(item.value) for key, item in changed.items()}
                lines.extend(f"{key} = {item.value}" for key, item in changed.items())
            else:
                record["items"] = list(changed)
                lines.extend(changed)
        except ValueError as exc:
            record["error"] = str(exc)
            lines.append(f"Error raised processing heap: {exc}")
        if args.json:
            lines = [json.dumps(record)]
        if not args.quiet:
            print("\n".join(lines), file=self.out)

    def stream_end(self, name, n_heaps, stats, stopped_by):
        values = {key: int(value) for key, value in stats.items()}
        if self.args.json:
            print(json.dumps({"type": "summary", "stream": name, "heaps": n_heaps, "stopped_by": stopped_by,
                              "stats": values}), file=self.out, flush=True)
            return
        lines = [f"Shutting down stream {name} after {n_heaps} heaps"]
        lines.extend(f"{key}: {value}" for key, value in values.items())
        print("\n".join(lines), file=self.out, flush=True)


def _json_value(value):
    """An item value as JSON (arrays as nested lists, bytes as text)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace")
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, complex):
        return [value.real, value.imag]
    return value


def build_heap_stream(args, thread_pool, allocator):
    config = spead2.recv.StreamConfig(max_heaps=args.max_heaps)
    if allocator is not None:
        config.memory_allocator = allocator
    if args.memcpy_nt:
        config.memcpy = spead2.MEMCPY_NONTEMPORAL
    ring_config = spead2.recv.RingStreamConfig(heaps=args.ring_heaps)
    return spead2.recv.Stream(thread_pool, config, ring_config)


def receive_heaps(args, sources: List[Source], stop: StopRequest, out=None, err=None) -> int:
    """Heap mode: a stream per source (one for all with --joint), consumed
    together until each ends, a signal or --duration."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    printer = HeapPrinter(args, out)
    thread_pool = spead2.ThreadPool(args.threads)
    allocator = None
    if args.mem_pool:
        allocator = spead2.MemoryPool(args.mem_lower, args.mem_upper, args.mem_max_free, args.mem_initial)
    groups = [sources] if args.joint else [[s] for s in sources]
    streams = []
    for group in groups:
        stream = build_heap_stream(args, thread_pool, allocator)
        for s in group:
            if s.kind == "file":
                stream.add_udp_pcap_file_reader(s.path, args.filter)
        add_network_readers(stream, [s for s in group if s.kind != "file"], args)
        streams.append({"name": group[0].text, "stream": stream, "ig": spead2.ItemGroup(), "heaps": 0})
    network = [s for s in sources if s.kind != "file"]
    if network and not args.quiet:
        protocol = "TCP" if args.tcp else "UDP"
        print(f"{PROG}: receiving from {', '.join(s.text for s in network)} (heaps over {protocol}; "
              "Ctrl-C to stop)", file=err, flush=True)
    deadline = time.monotonic() + args.duration if args.duration is not None else None
    stopped_by = "end of stream"
    active = list(streams)
    while active:
        if stopped_by == "end of stream":
            if stop.reason is not None:
                stopped_by = stop.reason
            elif deadline is not None and time.monotonic() >= deadline:
                stopped_by = "duration"
            if stopped_by != "end of stream":
                for entry in active:
                    entry["stream"].stop()   # heaps already received are still printed
        busy = False
        for entry in list(active):
            try:
                heap = entry["stream"].get_nowait()
            except spead2.Empty:
                continue
            except spead2.Stopped:
                active.remove(entry)
                entry["stream"].stop()
                printer.stream_end(entry["name"], entry["heaps"], entry["stream"].stats, stopped_by)
                continue
            busy = True
            entry["heaps"] += 1
            printer.heap(entry["name"], heap, entry["ig"])
            if args.count is not None and entry["heaps"] >= args.count:
                # Done: heaps still in its ring are not shown.
                entry["stream"].stop()
                active.remove(entry)
                printer.stream_end(entry["name"], entry["heaps"], entry["stream"].stats, "count")
        if busy or not active:
            continue
        out.flush()
        timeout = POLL_INTERVAL
        if deadline is not None and stopped_by == "end of stream":
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        try:
            select.select([e["stream"].fd for e in active] + [stop.fd], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            pass
        stop.drain()
    out.flush()
    return 0


# ---------------------------------------------------------------------------
# Command line


def _item_id(text):
    value = _cli.integer(text)
    if not 0 < value < 1 << 23:
        raise argparse.ArgumentTypeError(f"not a valid item ID: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    cls = spead2.recv.ChunkRingStream
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Receive SPEAD traffic (UDP unicast or multicast, TCP, or a pcap capture) and print each "
                    "heap with its items (heap mode), or place heaps into chunks with a built-in placement and "
                    "report each chunk's completeness (chunk mode); then the stream statistics.",
        epilog="SOURCE: HOST:PORT or PORT (bind), GROUP:PORT (multicast; [ADDR]:PORT for IPv6), or a capture "
               "file.  Ctrl-C stops cleanly and prints the summary.",
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="where to receive from (see below)")

    mode = parser.add_argument_group(
        "mode", "heap mode prints every heap; chunk mode places heaps into chunks.  Without either flag, "
                "chunk mode is chosen when a placement or chunk option is given, heap mode otherwise")
    exclusive = mode.add_mutually_exclusive_group()
    exclusive.add_argument("--heaps", dest="mode", action="store_const", const="heaps", default=None,
                           help="receive heap by heap (spead2.recv.Stream) and print each heap")
    exclusive.add_argument("--chunks", dest="mode", action="store_const", const="chunks",
                           help="receive into chunks (spead2.recv.ChunkRingStream)")

    heaps = parser.add_argument_group("heap mode")
    heaps.add_argument("--descriptors", action="store_true", help="show each descriptor in full")
    heaps.add_argument("--values", action="store_true", help="show item values, not only their names")
    heaps.add_argument("--joint", action="store_true", help="one stream for all sources (else one per source)")
    heaps.add_argument("--count", type=_cli.positive_int, default=None, metavar="N",
                       help="stop each stream after N heaps")
    heaps.add_argument("--ring-heaps", type=_cli.positive_int, default=spead2.recv.RingStreamConfig.DEFAULT_HEAPS,
                       metavar="N", help="depth of the ring of finished heaps [%(default)s]")
    heaps.add_argument("--mem-pool", action="store_true", help="allocate heaps from a spead2.MemoryPool")
    heaps.add_argument("--mem-lower", type=_cli.nonnegative_int, default=DEFAULT_MEM_LOWER, metavar="BYTES",
                       help="smallest heap served by the pool [%(default)s]")
    heaps.add_argument("--mem-upper", type=_cli.nonnegative_int, default=DEFAULT_MEM_UPPER, metavar="BYTES",
                       help="largest heap served by the pool (its buffer size) [%(default)s]")
    heaps.add_argument("--mem-max-free", type=_cli.nonnegative_int, default=DEFAULT_MEM_MAX_FREE, metavar="N",
                       help="free buffers the pool keeps [%(default)s]")
    heaps.add_argument("--mem-initial", type=_cli.nonnegative_int, default=DEFAULT_MEM_INITIAL, metavar="N",
                       help="buffers the pool starts with [%(default)s]")

    place = parser.add_argument_group("placement (chunk mode)")
    place.add_argument("--place", choices=["timestamp", "cnt"], default="timestamp",
                       help="chunk by a timestamp item and a channel item, or by heap counter [%(default)s]")
    place.add_argument("--heap-size", type=_cli.positive_int, default=DEFAULT_HEAP_SIZE, metavar="BYTES",
                       help="payload bytes of every data heap; other heaps are rejected [%(default)s]")
    place.add_argument("--heaps-per-chunk", type=_cli.positive_int, default=None, metavar="N",
                       help=f"heaps in a chunk [timestamp: --channels; cnt: {DEFAULT_HEAPS_PER_CHUNK_CNT}]")
    place.add_argument("--timestamp-id", type=_item_id, default=DEFAULT_TIMESTAMP_ID, metavar="ID",
                       help=f"item ID of the timestamp [{DEFAULT_TIMESTAMP_ID:#x}]")
    place.add_argument("--channel-id", type=_item_id, default=DEFAULT_CHANNEL_ID, metavar="ID",
                       help=f"item ID of the channel (frequency) [{DEFAULT_CHANNEL_ID:#x}]")
    place.add_argument("--channels", type=_cli.positive_int, default=DEFAULT_CHANNELS, metavar="N",
                       help="channels per timestamp [%(default)s]")
    place.add_argument("--channel-step", type=_cli.positive_int, default=None, metavar="N",
                       help="difference between successive channel values [heap size / 4, as spead2_send]")
    place.add_argument("--timestamp-step", type=_cli.positive_int, default=1, metavar="N",
                       help="difference between successive timestamps [%(default)s]")
    place.add_argument("--first-timestamp", type=_cli.nonnegative_int, default=0, metavar="N",
                       help="timestamps below this are rejected; t is counted from here [%(default)s]")
    place.add_argument("--cnt-first", type=_cli.nonnegative_int, default=1, metavar="N",
                       help="heap counter of position 0 for --place cnt [%(default)s]")
    place.add_argument("--cnt-step", type=_cli.positive_int, default=1, metavar="N",
                       help="heap counter increment per position for --place cnt [%(default)s]")
    place.add_argument("--verify", action="store_true",
                       help="check every heap's payload against spead2_send's pattern (--place timestamp)")

    stream = parser.add_argument_group("stream")
    stream.add_argument("--memcpy-nt", action="store_true", help="copy payloads with non-temporal stores")
    stream.add_argument("--max-chunks", type=_cli.positive_int, default=DEFAULT_MAX_CHUNKS, metavar="N",
                        help="chunks being filled at once (the window) [%(default)s]")
    stream.add_argument("--max-heaps", type=_cli.positive_int, default=spead2.recv.StreamConfig.DEFAULT_MAX_HEAPS,
                        metavar="N", help="heaps being assembled at once [%(default)s]")
    stream.add_argument("--ring", type=_cli.positive_int, default=None, metavar="N",
                        help="depth of the ring of finished chunks [--max-chunks]")
    stream.add_argument("--threads", type=_cli.positive_int, default=1, metavar="N",
                        help="worker threads (per stream with --streams) [%(default)s]")
    stream.add_argument("--streams", type=_cli.positive_int, default=None, metavar="N",
                        help="receive with a chunk stream group of N streams, each on its own thread pool; "
                             "source i goes to stream i %% N, capture files are replayed together")
    stream.add_argument("--eviction", choices=["lossy", "lossless"], default="lossy",
                        help="with --streams: what happens to a stream that falls behind [%(default)s]")
    stream.add_argument("--cores", type=_cli.cpu_list, default=None, metavar="LIST",
                        help="with --streams: pin stream i's thread to the i-th core of LIST (e.g. 2,3)")

    net = parser.add_argument_group("network")
    net.add_argument("--max-size", type=_cli.positive_int, default=None, metavar="BYTES",
                     help=f"largest datagram accepted; larger ones are dropped [{cls.DEFAULT_UDP_MAX_SIZE}]")
    net.add_argument("--buffer", type=_cli.nonnegative_int, default=None, metavar="BYTES",
                     help="socket receive buffer, 0 for the OS default (see net.core.rmem_max) "
                          f"[{cls.DEFAULT_UDP_BUFFER_SIZE}; with --ibv, the ibverbs default]")
    net.add_argument("--interface", metavar="ADDRESS", default="",
                     help="IPv4 address of the interface to join multicast groups on (and for --ibv)")
    net.add_argument("--interface-index", type=_cli.nonnegative_int, default=0, metavar="INDEX",
                     help="index of the interface to join IPv6 multicast groups on, 0 = any [%(default)s]")
    net.add_argument("--tcp", action="store_true", help="HOST:PORT sources listen for TCP connections, not UDP")
    net.add_argument("--ibv", action="store_true", help="receive UDP with ibverbs (where this build has it)")
    net.add_argument("--check-ibv", action="store_true",
                     help="instead of receiving, report whether ibverbs works here and what blocks it "
                          "(spead2_ibv_check; takes --interface, --json)")
    net.add_argument("--ibv-vector", type=int, default=0, metavar="N",
                     help="completion vector for --ibv, -1 to poll [%(default)s]")
    net.add_argument("--filter", default="", metavar="BPF", help="BPF filter for capture files")

    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true",
                     help="one JSON object per chunk (heap mode: per heap) and one for the summary (per stream)")
    out.add_argument("-q", "--quiet", action="store_true", help="print only the summary (no chunks, no progress)")
    out.add_argument("--live", action="store_true",
                     help="chunk mode: instead of chunk lines, a view refreshed twice a second of each stream's "
                          "rate and losses by kind, the rings' occupancy and the group window; with --json, "
                          "'live' records")
    out.add_argument("--duration", type=_cli.positive_float, default=None, metavar="SECONDS",
                     help="stop after this long")
    out.add_argument("-v", "--verbose", action="store_true", help="show spead2's debug log messages")
    return parser


def check_args(parser, args) -> Layout:
    if args.heaps_per_chunk is None:
        args.heaps_per_chunk = args.channels if args.place == "timestamp" else DEFAULT_HEAPS_PER_CHUNK_CNT
    if args.channel_step is None:
        args.channel_step = max(1, args.heap_size // 4)
    if args.place == "timestamp" and args.heaps_per_chunk % args.channels:
        parser.error(f"--heaps-per-chunk ({args.heaps_per_chunk}) must be a multiple of --channels "
                     f"({args.channels})")
    if args.verify and args.place != "timestamp":
        parser.error("--verify needs --place timestamp")
    if args.heap_size * args.heaps_per_chunk > 1 << 34:
        parser.error("chunks of more than 16 GiB: lower --heap-size or --heaps-per-chunk")
    return Layout(
        place=args.place, heap_size=args.heap_size, heaps_per_chunk=args.heaps_per_chunk,
        timestamp_id=args.timestamp_id, channel_id=args.channel_id, channels=args.channels,
        channel_step=args.channel_step, timestamp_step=args.timestamp_step,
        first_timestamp=args.first_timestamp, cnt_first=args.cnt_first, cnt_step=args.cnt_step)


def given_options(argv, dests) -> List[str]:
    """Which of the options `dests` the command line sets explicitly (also
    when it repeats the default; abbreviations count)."""
    parser = build_parser()
    for action in parser._actions:
        if action.dest in dests:
            action.default = argparse.SUPPRESS
    args = parser.parse_args(argv)
    return [dest for dest in dests if hasattr(args, dest)]


def choose_mode(parser, args, argv) -> str:
    chunk_given = given_options(argv, CHUNK_OPTIONS)
    heap_given = given_options(argv, HEAP_OPTIONS)
    mode = args.mode or ("chunks" if chunk_given else "heaps")
    flag = lambda dest: "--" + dest.replace("_", "-")  # noqa: E731
    if mode == "heaps" and chunk_given:
        parser.error(f"{flag(chunk_given[0])} applies to chunk mode (--chunks), not --heaps")
    if mode == "chunks" and heap_given:
        hint = "" if args.mode else " (chunk mode was chosen because of " + flag(chunk_given[0]) + ")"
        parser.error(f"{flag(heap_given[0])} applies to heap mode (--heaps){hint}")
    return mode


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--check-ibv" in argv:
        # spead2_recv --check-ibv [--interface ADDRESS] [...]: spead2_ibv_check
        from spead2.tools import ibv_check

        return ibv_check.main([a for a in argv if a != "--check-ibv"])
    parser = build_parser()
    if argv is None:
        argv = sys.argv[1:]
    args = parser.parse_args(argv)
    mode = choose_mode(parser, args, argv)
    layout = check_args(parser, args) if mode == "chunks" else None
    if args.interface:
        try:
            ipaddress.IPv4Address(args.interface)
        except ValueError:
            parser.error(f"--interface must be an IPv4 address, not {args.interface!r}")
    sources = []
    for text in args.sources:
        try:
            sources.append(parse_source(text))
        except ValueError as exc:
            parser.error(str(exc))
    if mode == "chunks" and any(s.kind == "file" for s in sources) and any(s.kind != "file" for s in sources):
        parser.error("capture files and network sources cannot be mixed")
    if args.ibv and any(s.kind == "file" for s in sources):
        parser.error("--ibv applies to network sources only")
    if args.tcp and args.ibv:
        parser.error("--tcp and --ibv cannot be combined")
    if args.streams is not None and args.streams > len(sources):
        parser.error(f"--streams {args.streams} needs at least {args.streams} sources "
                     "(a stream without a source would hold back the others)")
    if args.cores is not None and (args.streams is None or len(args.cores) < args.streams):
        parser.error("--cores needs --streams and one core per stream")

    logging.basicConfig(format=f"{PROG}: %(name)s %(levelname)s: %(message)s",
                        level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    # Signals are caught from here on: a Ctrl-C at any point still ends with
    # the summary.
    stop = StopRequest()
    stop.install()
    try:
        if mode == "heaps":
            return receive_heaps(args, sources, stop)
        return receive(args, layout, sources, stop)
    except BrokenPipeError:
        # The reader of our output went away (e.g. | head): not an error of ours.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:  # pragma: no cover
            pass
        return 0
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        stop.restore()


if __name__ == "__main__":
    sys.exit(main())
