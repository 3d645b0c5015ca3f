"""Replay SPEAD captures into chunks and report what arrived.

Usage::

    python -m spead2.tools.demo CAPTURE [CAPTURE ...]

Each capture (pcap or pcapng) holds correlator-like heaps with a timestamp
item (0x1600) and a frequency item (0x4103).  Heaps with the same timestamp
go into one chunk, ordered by frequency.  When a JSON manifest with the same
name sits next to the capture (``x.pcap`` → ``x.json``; ``x.pcapng`` also
tries ``x.json``), every heap's payload is checked against its SHA-256.
"""

import argparse
import hashlib
import json
import pathlib
import sys

import numpy as np

import spead2
import spead2.recv
from spead2.recv import numba_place

TIMESTAMP_ID = 0x1600
FREQUENCY_ID = 0x4103


def find_manifest(capture: pathlib.Path):
    candidate = capture.with_suffix(".json")
    if candidate.exists():
        return json.loads(candidate.read_text())
    return None


def replay(capture: pathlib.Path, out=sys.stdout) -> bool:
    manifest = find_manifest(capture)
    if manifest is None:
        print(f"{capture}: no manifest next to it; cannot infer the layout", file=out)
        return False
    heaps = manifest["heaps"]
    heap_size = manifest["heap_payload_bytes"]
    timestamps = sorted({h["timestamp"] for h in heaps})
    frequencies = sorted({h["frequency"] for h in heaps})
    ts_step = timestamps[1] - timestamps[0] if len(timestamps) > 1 else 1
    freq_step = frequencies[1] - frequencies[0] if len(frequencies) > 1 else 1
    channels = len(frequencies)
    expected = {(h["timestamp"], h["frequency"]): h["sha256"] for h in heaps}

    place = numba_place.timestamp_channel(heap_size=heap_size, channels=channels, channel_step=freq_step,
                                          timestamp_step=ts_step, first_timestamp=timestamps[0],
                                          timestamp_id=TIMESTAMP_ID, channel_id=FREQUENCY_ID)
    max_chunks = 4
    pool = spead2.ThreadPool()
    config = spead2.recv.StreamConfig(max_heaps=8)
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=place.items, max_chunks=max_chunks, place=place
    )
    data_ring = spead2.recv.ChunkRingbuffer(max_chunks)
    free_ring = spead2.recv.ChunkRingbuffer(2 * max_chunks)
    stream = spead2.recv.ChunkRingStream(pool, config, chunk_config, data_ring, free_ring)
    for _ in range(2 * max_chunks):
        stream.add_free_chunk(
            spead2.recv.Chunk(
                present=np.zeros(channels, np.uint8), data=np.zeros(channels * heap_size, np.uint8)
            )
        )
    stream.add_udp_pcap_file_reader(str(capture))

    print(f"{capture.name}: {manifest.get('flavour', '?')}, {heap_size}-byte heaps, "
          f"{channels} per chunk", file=out)
    verified = 0
    bad = 0
    for chunk in data_ring:
        flags = "".join("#" if p else "." for p in chunk.present)
        ts = timestamps[0] + chunk.chunk_id * ts_step
        print(f"  chunk {chunk.chunk_id:3d} (timestamp {ts}): [{flags}] "
              f"{int(chunk.present.sum())}/{channels} heaps", file=out)
        for index in np.flatnonzero(chunk.present):
            payload = chunk.data[index * heap_size:(index + 1) * heap_size]
            digest = hashlib.sha256(payload.tobytes()).hexdigest()
            if expected.get((ts, int(index) * freq_step)) == digest:
                verified += 1
            else:
                bad += 1
        stream.add_free_chunk(chunk)
    stats = stream.stats
    print(f"  {verified}/{len(heaps)} heaps verified against the manifest, {bad} mismatched; "
          f"packets={stats['packets']} heaps={stats['heaps']} rejected={stats['rejected_heaps']} "
          f"malformed={stats['malformed_packets']}", file=out)
    stream.stop()
    return bad == 0 and verified == len(heaps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("captures", nargs="+", type=pathlib.Path)
    args = parser.parse_args(argv)
    ok = True
    for capture in args.captures:
        ok &= replay(capture)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
