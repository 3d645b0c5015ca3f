#!/usr/bin/env python3
"""Two UDP ports, two streams on two threads, one sequence of chunks.

A chunk stream group: each member stream receives one port on its own
one-thread pool, and all members write into the same chunks.  The example
sends its own traffic to both ports over loopback (heap i to port i % 2),
then prints the chunks.  Run from anywhere:

    python3 examples/group_two_ports.py
"""

import socket
import struct
import threading
import time

import numpy as np

import spead2
import spead2.recv
from spead2.recv import numba_place

HEAP_SIZE = 1024            # payload bytes per heap
HEAPS_PER_CHUNK = 8
N_HEAPS = 64
MEMBERS = 2

# The standard heap-counter callback: heap counter 1 + i goes to chunk
# i // HEAPS_PER_CHUNK, at heap index i % HEAPS_PER_CHUNK.
place = numba_place.heap_counter(heap_size=HEAP_SIZE, heaps_per_chunk=HEAPS_PER_CHUNK)


def packet(cnt, items, payload=b""):
    """A single-packet SPEAD-64-48 heap: HEAP_CNT, HEAP_LENGTH, PAYLOAD_OFFSET,
    PAYLOAD_LENGTH and `items` as immediates, then the payload."""
    items = [(0x01, cnt), (0x02, len(payload)), (0x03, 0), (0x04, len(payload))] + items
    header = struct.pack(">BBBBHH", 0x53, 4, 2, 6, 0, len(items))
    pointers = b"".join(struct.pack(">Q", (1 << 63) | (i << 48) | v) for i, v in items)
    return header + pointers + payload


def data_heap(position):
    return packet(position + 1, [], bytes([position % 256]) * HEAP_SIZE)


def stop_heap(cnt):
    return packet(cnt, [(spead2.STREAM_CTRL_ID, spead2.CTRL_STREAM_STOP)])


def main():
    config = spead2.recv.ChunkStreamGroupConfig(
        max_chunks=4, eviction_mode=spead2.recv.ChunkStreamGroupConfig.EvictionMode.LOSSLESS)
    n_chunks = 8
    data_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    group = spead2.recv.ChunkStreamRingGroup(config, data_ring, free_ring)
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=place.items, max_chunks=4, place=place)
    ports = []
    for i in range(MEMBERS):
        # One thread per member (pin it with spead2.ThreadPool(1, [core])).
        member = group.emplace_back(spead2.ThreadPool(1), spead2.recv.StreamConfig(stream_id=i), chunk_config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        ports.append(sock.getsockname()[1])
        member.add_udp_reader(sock)  # the member keeps its own copy of the socket
        sock.close()
    for _ in range(n_chunks):
        group.add_free_chunk(spead2.recv.Chunk(present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
                                               data=np.zeros(HEAPS_PER_CHUNK * HEAP_SIZE, np.uint8)))

    def send():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for position in range(N_HEAPS):
                tx.sendto(data_heap(position), ("127.0.0.1", ports[position % MEMBERS]))
                time.sleep(0.0002)  # loopback has small socket buffers; do not flood them
            # A stop heap ends each member; once all have ended, the group
            # delivers the chunks still being filled and stops the data ring.
            for port in ports:
                tx.sendto(stop_heap(N_HEAPS + 1), ("127.0.0.1", port))

    sender = threading.Thread(target=send)
    sender.start()
    received = 0
    for chunk in data_ring:
        print(f"chunk {chunk.chunk_id} from stream {chunk.stream_id}: present {chunk.present.tolist()}")
        received += int(chunk.present.sum())
        group.add_free_chunk(chunk)
    sender.join()
    group.stop()
    for i, member in enumerate(group):
        print(f"stream {i}: {member.stats['heaps']} heaps, {member.stats['packets']} packets")
    print(f"{received} heaps delivered in chunks")


if __name__ == "__main__":
    main()
