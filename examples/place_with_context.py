#!/usr/bin/env python3
"""A place callback that takes its parameters from user data, writes extra
per-heap data and keeps a custom statistic.

Run from the root of the repository:

    python3 examples/place_with_context.py
"""

import ctypes

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

# Positions in the user-data array handed to the callback.
P_ORIGIN, P_STEP, P_HEAP_SIZE, P_CHANNELS_PER_HEAP, P_HEAPS_PER_CHUNK, P_STAT_INDEX = range(6)


@numba.cfunc(
    types.void(types.CPointer(chunk_place_data), types.size_t, types.CPointer(types.int64)),
    nopython=True,
)
def place(data_ptr, data_size, user_data_ptr):
    data = numba.carray(data_ptr, 1)
    params = numba.carray(user_data_ptr, 6)
    items = numba.carray(intp_to_voidptr(data[0].items), 3, dtype=np.int64)
    timestamp = items[0]
    frequency = items[1]
    heap_size = items[2]
    if timestamp < 0:
        # Count heaps without a timestamp (the descriptor and stop heaps here)
        # in our own statistic.  batch_stats is indexed like stream.stats.
        stat_index = params[P_STAT_INDEX]
        batch_stats = numba.carray(intp_to_voidptr(data[0].batch_stats), stat_index + 1, dtype=np.uint64)
        batch_stats[stat_index] += 1
        return
    if timestamp < params[P_ORIGIN] or frequency < 0 or heap_size != params[P_HEAP_SIZE]:
        return
    heap_index = frequency // params[P_CHANNELS_PER_HEAP]
    if heap_index >= params[P_HEAPS_PER_CHUNK]:
        return
    data[0].chunk_id = (timestamp - params[P_ORIGIN]) // params[P_STEP]
    data[0].heap_index = heap_index
    data[0].heap_offset = heap_index * heap_size
    # Extra data: record each heap's timestamp, 8 bytes per heap.
    extra = numba.carray(intp_to_voidptr(data[0].extra), 1, dtype=np.int64)
    extra[0] = timestamp
    data[0].extra_offset = heap_index * 8
    data[0].extra_size = 8


def main():
    config = spead2.recv.StreamConfig()
    stat_index = config.add_stat("example.heaps_without_timestamp")
    params = np.array([1000000, 8192, HEAP_PAYLOAD_SIZE, 256, HEAPS_PER_CHUNK, stat_index], np.int64)
    user_data = params.ctypes.data_as(ctypes.c_void_p)   # params must outlive the stream
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=[0x1600, 0x4103, spead2.HEAP_LENGTH_ID],
        max_chunks=2,
        max_heap_extra=8,
        place=scipy.LowLevelCallable(place.ctypes, user_data, "void (void *, size_t, void *)"),
    )
    n_chunks = 6
    data_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    stream = spead2.recv.ChunkRingStream(spead2.ThreadPool(), config, chunk_config, data_ring, free_ring)
    for _ in range(n_chunks):
        stream.add_free_chunk(
            spead2.recv.Chunk(
                present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
                data=np.zeros(HEAPS_PER_CHUNK * HEAP_PAYLOAD_SIZE, np.uint8),
                extra=np.zeros(HEAPS_PER_CHUNK, np.int64),
            )
        )
    stream.add_udp_pcap_file_reader(CAPTURE)
    for chunk in data_ring:
        print(chunk.chunk_id, chunk.present.tolist(), chunk.extra.tolist())
        stream.add_free_chunk(chunk)
    stream.stop()
    print("heaps without timestamp:", stream.stats["example.heaps_without_timestamp"])


if __name__ == "__main__":
    main()
