#!/usr/bin/env python3
"""Write a small capture of correlator-like heaps, for replaying in CI.

    python3 examples/make_capture.py [FILE]        (default: ci.pcap)

The capture has the layout that examples/quickstart.py expects (8 KiB heaps,
four frequency bands 256 channels apart, timestamps 8192 apart from 1000000):
a descriptor heap, 8 x 4 data heaps, and an end-of-stream heap.  A manifest
with the SHA-256 of every payload is written next to it (ci.json), so that

    python3 -m spead2.tools.demo ci.pcap

replays the capture through a chunk stream and checks every heap.
"""

import hashlib
import json
import pathlib
import sys

import numpy as np

import spead2
import spead2.send

HEAP_SIZE = 8192
CHANNELS_PER_HEAP = 256
BANDS = 4
TIMESTAMPS = 8
TIMESTAMP_STEP = 8192
TIMESTAMP_ORIGIN = 1000000


def main(filename="ci.pcap"):
    flavour = spead2.Flavour(4, 64, 48, 0)
    thread_pool = spead2.ThreadPool()
    config = spead2.send.StreamConfig(max_packet_size=1472)
    # Frames go from 127.0.0.1 (the default source) to 127.0.0.1:7148.
    stream = spead2.send.PcapFileStream(thread_pool, filename, [("127.0.0.1", 7148)], config)

    ig = spead2.send.ItemGroup(flavour=flavour)
    ig.add_item(0x1600, "timestamp", "sample counter of the first sample", shape=(), format=[("u", 48)])
    ig.add_item(0x4103, "frequency", "first channel in the heap", shape=(), format=[("u", 48)])
    ig.add_item(0x3300, "data", "channelised samples", shape=(HEAP_SIZE,), dtype=np.uint8)
    stream.send_heap(ig.get_heap(descriptors="all", data="none"))

    rng = np.random.default_rng(seed=2024)  # the same capture every time
    manifest = []
    for t in range(TIMESTAMPS):
        for band in range(BANDS):
            ig["timestamp"].value = TIMESTAMP_ORIGIN + t * TIMESTAMP_STEP
            ig["frequency"].value = band * CHANNELS_PER_HEAP
            ig["data"].value = rng.integers(0, 256, HEAP_SIZE, dtype=np.uint8)
            stream.send_heap(ig.get_heap(descriptors="none", data="all"))
            manifest.append({
                "timestamp": ig["timestamp"].value,
                "frequency": ig["frequency"].value,
                "sha256": hashlib.sha256(ig["data"].value.tobytes()).hexdigest(),
            })
    stream.send_heap(ig.get_end())
    stream.flush()

    path = pathlib.Path(filename)
    with open(path.with_suffix(".json"), "w") as f:
        json.dump({"flavour": "SPEAD-64-48", "heap_payload_bytes": HEAP_SIZE, "heaps": manifest}, f, indent=1)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(manifest)} data heaps) and {path.with_suffix('.json')}")


if __name__ == "__main__":
    main(*sys.argv[1:])
