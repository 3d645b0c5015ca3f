#!/usr/bin/env python3
"""Packet presence: one present flag per packet instead of per heap.

Run from the root of the repository:

    python3 examples/packet_presence.py
"""

import numba
import numpy as np
import scipy
from numba import types

import spead2
import spead2.recv
from spead2.numba import intp_to_voidptr
from spead2.recv.numba import chunk_place_data

CAPTURE = "tests/data/lo-64-48-8k-multi.pcap"
HEAPS_PER_CHUNK = 4
HEAP_PAYLOAD_SIZE = 8192
PACKET_PAYLOAD_SIZE = 1408   # payload bytes in every packet but the last of a heap
PACKETS_PER_HEAP = (HEAP_PAYLOAD_SIZE + PACKET_PAYLOAD_SIZE - 1) // PACKET_PAYLOAD_SIZE   # 6


@numba.cfunc(types.void(types.CPointer(chunk_place_data), types.size_t), nopython=True)
def place(data_ptr, data_size):
    data = numba.carray(data_ptr, 1)
    items = numba.carray(intp_to_voidptr(data[0].items), 3, dtype=np.int64)
    timestamp, frequency, heap_size = items[0], items[1], items[2]
    if timestamp < 1000000 or frequency < 0 or heap_size != HEAP_PAYLOAD_SIZE:
        return
    band = frequency // 256
    if band >= HEAPS_PER_CHUNK:
        return
    data[0].chunk_id = (timestamp - 1000000) // 8192
    # With packet presence, heap_index is where the heap's first flag goes;
    # the flag of the packet at payload offset p is heap_index + p // 1408.
    data[0].heap_index = band * PACKETS_PER_HEAP
    data[0].heap_offset = band * HEAP_PAYLOAD_SIZE


def main():
    config = spead2.recv.StreamConfig(allow_out_of_order=True)
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=[0x1600, 0x4103, spead2.HEAP_LENGTH_ID],
        place=scipy.LowLevelCallable(place.ctypes, signature="void (void *, size_t)"),
    ).enable_packet_presence(PACKET_PAYLOAD_SIZE)
    data_ring = spead2.recv.ChunkRingbuffer(4)
    free_ring = spead2.recv.ChunkRingbuffer(4)
    stream = spead2.recv.ChunkRingStream(spead2.ThreadPool(), config, chunk_config, data_ring, free_ring)
    for _ in range(4):
        stream.add_free_chunk(
            spead2.recv.Chunk(
                present=np.zeros(HEAPS_PER_CHUNK * PACKETS_PER_HEAP, np.uint8),
                data=np.zeros(HEAPS_PER_CHUNK * HEAP_PAYLOAD_SIZE, np.uint8),
            )
        )
    stream.add_udp_pcap_file_reader(CAPTURE)
    for chunk in data_ring:
        flags = chunk.present.reshape(HEAPS_PER_CHUNK, PACKETS_PER_HEAP)
        print(chunk.chunk_id, "packets per heap:", flags.sum(axis=1).tolist())
        stream.add_free_chunk(chunk)
    stream.stop()


if __name__ == "__main__":
    main()
