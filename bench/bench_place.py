#!/usr/bin/env python3
"""Built-in placements (spead2.recv.place) against the equivalent numba callback.

The same traffic (heaps laid out by timestamp x channel, from memory) through
a ChunkRingStream twice per round, once with each placement, alternating;
prints packets/s of each and the ratio per round, and the median.  Both run
in this process with this repository's spead2.

    python3 bench/bench_place.py [--heap-size 1024] [--packet-size 1088] [--heaps 200000] [--rounds 5]
"""

import argparse
import statistics
import struct
import time

import numpy as np

import spead2
import spead2.recv
import spead2.recv.place
from spead2.tools.recv import Layout, make_place_callback

CHANNELS = 4


def traffic(n_heaps, heap_size, packet_payload):
    """SPEAD-64-48 packets: HEAP_CNT, HEAP_LENGTH, PAYLOAD_OFFSET, PAYLOAD_LENGTH, timestamp, channel."""
    out = bytearray()
    payload = bytes(range(256)) * (packet_payload // 256 + 1)
    for i in range(n_heaps):
        ts, ch = (i // CHANNELS) * 1024, (i % CHANNELS) * 256
        for off in range(0, heap_size, packet_payload):
            n = min(packet_payload, heap_size - off)
            items = [(1, i + 1), (2, heap_size), (3, off), (4, n), (0x1600, ts), (0x4103, ch)]
            out += struct.pack(">BBBBHH", 0x53, 4, 2, 6, 0, len(items))
            out += b"".join(struct.pack(">Q", (1 << 63) | (item << 48) | v) for item, v in items)
            out += payload[:n]
    return np.frombuffer(bytes(out), np.uint8)


def run(buf, place, items, heaps_per_chunk, heap_size):
    n_chunks = 8
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(), spead2.recv.StreamConfig(max_heaps=8),
        spead2.recv.ChunkStreamConfig(items=items, max_chunks=4, place=place, max_heap_extra=8),
        spead2.recv.ChunkRingbuffer(n_chunks), spead2.recv.ChunkRingbuffer(n_chunks))
    for _ in range(n_chunks):
        stream.add_free_chunk(spead2.recv.Chunk(present=np.zeros(heaps_per_chunk, np.uint8),
                                                data=np.zeros(heaps_per_chunk * heap_size, np.uint8),
                                                extra=np.zeros(heaps_per_chunk, np.int64)))
    start = time.perf_counter()
    stream.add_buffer_reader(buf)
    for chunk in stream.data_ringbuffer:
        stream.add_free_chunk(chunk)
    elapsed = time.perf_counter() - start
    packets = stream.stats["packets"]
    stream.stop()
    return packets / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heap-size", type=int, default=1024)
    parser.add_argument("--packet-size", type=int, default=1088, help="SPEAD packet size (payload + 56)")
    parser.add_argument("--heaps", type=int, default=200000)
    parser.add_argument("--timestamps-per-chunk", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    payload = args.packet_size - 56
    buf = traffic(args.heaps, args.heap_size, payload)
    layout = Layout(place="timestamp", heap_size=args.heap_size, heaps_per_chunk=CHANNELS * args.timestamps_per_chunk,
                    channels=CHANNELS, channel_step=256, timestamp_step=1024)
    numba_place = make_place_callback(layout)
    builtin = spead2.recv.place.timestamp_channel(heap_size=args.heap_size, channels=CHANNELS, channel_step=256,
                                                 timestamp_step=1024, timestamps_per_chunk=args.timestamps_per_chunk,
                                                 extra=True)
    run(buf, numba_place, layout.items, layout.heaps_per_chunk, args.heap_size)   # warm-up
    ratios = []
    print(f"{args.heaps} heaps of {args.heap_size} B in {payload} B packets, {buf.nbytes / 1e6:.0f} MB from memory")
    print(f"{'round':>5} {'numba Mpkt/s':>13} {'built-in Mpkt/s':>16} {'ratio':>6}")
    for r in range(args.rounds):
        a = run(buf, numba_place, layout.items, layout.heaps_per_chunk, args.heap_size)
        b = run(buf, builtin, builtin.items, builtin.heaps_per_chunk, args.heap_size)
        ratios.append(b / a)
        print(f"{r:>5} {a / 1e6:>13.2f} {b / 1e6:>16.2f} {b / a:>6.2f}")
    print(f"built-in / numba: median {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
