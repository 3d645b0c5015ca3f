#!/usr/bin/env python3
"""Consume chunks from an asyncio coroutine.

Reuses the place callback and constants of quickstart.py.  Run from the root
of the repository:

    python3 examples/asyncio_receive.py
"""

import asyncio

import numpy as np
import scipy

import spead2
import spead2.recv
import spead2.recv.asyncio
from quickstart import (
    CAPTURE, FREQUENCY_ID, HEAP_PAYLOAD_SIZE, HEAPS_PER_CHUNK, TIMESTAMP_ID, place,
)


async def main():
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=[TIMESTAMP_ID, FREQUENCY_ID, spead2.HEAP_LENGTH_ID],
        place=scipy.LowLevelCallable(place.ctypes, signature="void (void *, size_t)"),
    )
    # Only the data ring needs to be awaitable: the free ring is filled with
    # add_free_chunk, which never blocks.
    data_ring = spead2.recv.asyncio.ChunkRingbuffer(4)
    free_ring = spead2.recv.ChunkRingbuffer(4)
    stream = spead2.recv.ChunkRingStream(
        spead2.ThreadPool(), spead2.recv.StreamConfig(), chunk_config, data_ring, free_ring
    )
    for _ in range(4):
        stream.add_free_chunk(
            spead2.recv.Chunk(
                present=np.zeros(HEAPS_PER_CHUNK, np.uint8),
                data=np.zeros(HEAPS_PER_CHUNK * HEAP_PAYLOAD_SIZE, np.uint8),
            )
        )
    stream.add_udp_pcap_file_reader(CAPTURE)
    async for chunk in data_ring:
        print(f"chunk_id={chunk.chunk_id} heaps={int(chunk.present.sum())}")
        stream.add_free_chunk(chunk)
    stream.stop()


if __name__ == "__main__":
    asyncio.run(main())
