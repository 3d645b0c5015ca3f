#!/usr/bin/env python3
"""Serve a receiver's statistics on http://localhost:8000/metrics for Prometheus.

Replays a bundled capture in a loop into a two-member chunk stream group and
exports every statistic, the rings and the group window.  Needs
``pip install "spead2[prometheus]"``.  Run from the repository root:

    python3 examples/prometheus_metrics.py [--port 8000] [--seconds 10]
"""

import argparse
import time

import numpy as np
import prometheus_client

import spead2
import spead2.prometheus
import spead2.recv
from spead2.tools.recv import Layout, make_builtin_place

CAPTURE = "tests/data/lo-64-48-8k-multi.pcap"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    layout = Layout(place="timestamp", heap_size=8192, heaps_per_chunk=4, timestamp_id=0x1600,
                    channel_id=0x4103, channels=4, channel_step=256, timestamp_step=8192,
                    first_timestamp=1000000, cnt_first=1, cnt_step=1)
    place = make_builtin_place(layout)   # built-in C++ placement: no numba needed
    prometheus_client.start_http_server(args.port)
    print(f"serving http://localhost:{args.port}/metrics for {args.seconds} s")
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        config = spead2.recv.ChunkStreamGroupConfig(max_chunks=4)
        data_ring, free_ring = spead2.recv.ChunkRingbuffer(4), spead2.recv.ChunkRingbuffer(10)
        group = spead2.recv.ChunkStreamRingGroup(config, data_ring, free_ring)
        chunk_config = spead2.recv.ChunkStreamConfig(items=layout.items, max_chunks=4, place=place,
                                                     max_heap_extra=8)
        for i in range(2):
            group.emplace_back(spead2.ThreadPool(1), spead2.recv.StreamConfig(stream_id=i), chunk_config)
        for _ in range(10):
            group.add_free_chunk(spead2.recv.Chunk(present=np.zeros(4, np.uint8), data=np.zeros(4 * 8192, np.uint8),
                                                   extra=np.zeros(4, np.int64)))
        collector = spead2.prometheus.register(group, name="replay")
        group[0].add_udp_pcap_file_reader(CAPTURE)
        group[1].add_udp_pcap_file_reader(CAPTURE, "udp port 1")   # nothing matches: a silent member
        for chunk in data_ring:
            group.add_free_chunk(chunk)
        print(prometheus_client.generate_latest().decode().count("spead2_"), "spead2 samples exported")
        prometheus_client.REGISTRY.unregister(collector)
        group.stop()
        time.sleep(1)


if __name__ == "__main__":
    main()
