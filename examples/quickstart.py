#!/usr/bin/env python3
"""Replay a capture into chunks of four heaps and print what arrived.

Run from the root of the repository:

    python3 examples/quickstart.py
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
TIMESTAMP_ID = 0x1600       # immediate item: sample counter of the heap's first sample
FREQUENCY_ID = 0x4103       # immediate item: first channel held by the heap
HEAP_PAYLOAD_SIZE = 8192    # bytes of payload in every data heap
HEAPS_PER_CHUNK = 4         # one heap per frequency band: 0, 256, 512, 768
CHANNELS_PER_HEAP = 256
TIMESTAMP_STEP = 8192       # timestamp increment from one set of heaps to the next
TIMESTAMP_ORIGIN = 1000000  # timestamp that maps to chunk 0 (the first one in this capture)


@numba.cfunc(types.void(types.CPointer(chunk_place_data), types.size_t), nopython=True)
def place(data_ptr, data_size):
    data = numba.carray(data_ptr, 1)
    # Values of the immediate items listed in ChunkStreamConfig.items, in that
    # order; -1 means the first packet of the heap did not carry the item.
    items = numba.carray(intp_to_voidptr(data[0].items), 3, dtype=np.int64)
    timestamp = items[0]
    frequency = items[1]
    heap_size = items[2]
    # Leaving chunk_id at -1 discards the heap (e.g. the descriptor heap).
    if timestamp < TIMESTAMP_ORIGIN or frequency < 0 or heap_size != HEAP_PAYLOAD_SIZE:
        return
    heap_index = frequency // CHANNELS_PER_HEAP
    if heap_index >= HEAPS_PER_CHUNK:
        return
    data[0].chunk_id = (timestamp - TIMESTAMP_ORIGIN) // TIMESTAMP_STEP
    data[0].heap_index = heap_index
    data[0].heap_offset = heap_index * HEAP_PAYLOAD_SIZE


def main():
    thread_pool = spead2.ThreadPool()
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=[TIMESTAMP_ID, FREQUENCY_ID, spead2.HEAP_LENGTH_ID],
        max_chunks=2,
        place=scipy.LowLevelCallable(place.ctypes, signature="void (void *, size_t)"),
    )
    # Every chunk is either in the stream's window (max_chunks), in the data
    # ring, in the free ring or with us, so both rings can hold all of them.
    n_chunks = 6
    data_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    stream = spead2.recv.ChunkRingStream(
        thread_pool, spead2.recv.StreamConfig(), chunk_config, data_ring, free_ring
    )
    for _ in range(n_chunks):
        chunk = spead2.recv.Chunk(
            present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
            data=np.zeros(HEAPS_PER_CHUNK * HEAP_PAYLOAD_SIZE, np.uint8),
        )
        stream.add_free_chunk(chunk)

    stream.add_udp_pcap_file_reader(CAPTURE)
    # The capture ends with a stop heap, and the end of the file stops the
    # stream too; either way the data ring is stopped once every chunk has
    # been delivered, which ends this loop.
    for chunk in data_ring:
        print(f"chunk_id={chunk.chunk_id} present={chunk.present.tolist()}")
        stream.add_free_chunk(chunk)
    stream.stop()

    stats = stream.stats
    for name in ["packets", "heaps", "rejected_heaps", "too_old_heaps", "out_of_range_heaps"]:
        print(f"{name}: {stats[name]}")


if __name__ == "__main__":
    main()
