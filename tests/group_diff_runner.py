"""Runner of the group differential test (test_group_differential.py).

Runs under whichever ``spead2`` the interpreter imports (ours or the
reference): reads jobs (JSON lines) from the file given as argv[1], builds a
LOSSLESS ChunkStreamRingGroup for each with the C place callback of the
differential test (argv[2]), feeds every member its packets through an
InprocQueue, and prints one JSON line per job: the chunks that received data
(ID, present, a digest of the data) and every member's statistics.
"""

import base64
import ctypes
import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import diff_runner  # noqa: E402  (DiffParams and make_place; imports spead2)

import spead2  # noqa: E402
import spead2.recv  # noqa: E402


def run(job, lib):
    params = diff_runner.DiffParams(**job["params"])
    place = diff_runner.make_place(lib, params)
    mode = spead2.recv.ChunkStreamGroupConfig.EvictionMode.LOSSLESS
    config = spead2.recv.ChunkStreamGroupConfig(max_chunks=job["group_max_chunks"], eviction_mode=mode)
    n_chunks = job["group_max_chunks"] + len(job["members"]) + 4
    data_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    group = spead2.recv.ChunkStreamRingGroup(config, data_ring, free_ring)
    queues = []
    for i, member in enumerate(job["members"]):
        cfg = spead2.recv.StreamConfig(max_heaps=member["max_heaps"], allow_out_of_order=member["out_of_order"],
                                       stream_id=i)
        ccfg = spead2.recv.ChunkStreamConfig(items=job["items"], max_chunks=member["max_chunks"], place=place)
        m = group.emplace_back(spead2.ThreadPool(1), cfg, ccfg)
        q = spead2.InprocQueue()
        m.add_inproc_reader(q)
        queues.append(q)
    for _ in range(n_chunks):
        group.add_free_chunk(spead2.recv.Chunk(present=np.zeros(params.present_size, np.uint8),
                                               data=np.zeros(params.data_size, np.uint8)))
    for q, member in zip(queues, job["members"]):
        for pkt in member["packets"]:
            q.add_packet(base64.b64decode(pkt))
        q.stop()
    chunks = []
    for chunk in data_ring:
        if chunk.present.any():
            chunks.append([chunk.chunk_id, chunk.present.tolist(),
                           hashlib.sha256(chunk.data.tobytes()).hexdigest()[:16]])
        chunk.data.fill(0)
        group.add_free_chunk(chunk)
    group.stop()
    stats = []
    for m in group:
        s = m.stats
        stats.append({name: s[name] for name in s.keys()})
    return {"key": job["key"], "chunks": chunks, "stats": stats}


def main():
    lib = ctypes.CDLL(sys.argv[2])
    with open(sys.argv[1]) as f:
        for line in f:
            if line.strip():
                print(json.dumps(run(json.loads(line), lib)), flush=True)


if __name__ == "__main__":
    main()
