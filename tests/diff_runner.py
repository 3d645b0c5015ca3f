"""Runner of the differential test: feeds generated jobs to whatever
``spead2`` is importable and prints what came out, as JSON lines.

Usage::

    python diff_runner.py JOBFILE PLACE_SO [--slack] [--full]

It is run twice on the same job file: by our interpreter (with PYTHONPATH
pointing at our package) and by the reference's virtualenv (spead2 4.5.1),
which never meet in one process.  It must therefore run under both: plain
Python 3, numpy and ctypes only, nothing from this checkout except itself.

JOBFILE holds one JSON object per line (see ``diff_gen.py``).  PLACE_SO is the
compiled ``diff_place.c``; the callback is handed to ChunkStreamConfig.place
as a tuple whose first element is a PyCapsule named
``"void (void *, size_t, void *)"`` whose context points at the job's
``DiffParams``.

``--slack`` gives every chunk buffer room after its declared size (used for
the reference, which writes out-of-range placements outside the chunk); only
the declared part is reported.  ``--full`` reports chunk data in full (hex)
instead of digests, for debugging one seed.

For every job it prints ``{"begin": key}`` before starting (so that a crash
or a hang can be pinned on a job), then one result object: the chunks in the
order they came out of the data ring, and all statistics by name.
"""

import base64
import ctypes
import faulthandler
import hashlib
import json
import os
import struct
import sys
import tempfile
import zlib

import numpy as np

import spead2
import spead2.recv

#: Seconds one job may take before the runner gives up (dumps tracebacks and exits).
JOB_TIMEOUT = float(os.environ.get("SPEAD2_DIFF_JOB_TIMEOUT", "20"))

PARAM_FIELDS = [
    "idx_pos", "idx_len", "idx_plen", "idx_cnt", "idx_extra", "n_items",
    "heaps_per_chunk", "slot_size", "flags_per_slot", "bias", "data_size", "present_size",
    "extra_total", "extra_per_heap", "extra_size", "presence_payload",
    "reject_mod", "reject_rem", "oor_mod", "oor_rem", "overflow_oor", "max_len", "pos_from_cnt",
    "stat_counter", "stat_max", "stat_reject", "stat_poke", "stat_calls",
]


class DiffParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in PARAM_FIELDS]


SIGNATURE = ctypes.create_string_buffer(b"void (void *, size_t, void *)")
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
_capsule_set_context = ctypes.pythonapi.PyCapsule_SetContext
_capsule_set_context.restype = ctypes.c_int
_capsule_set_context.argtypes = [ctypes.py_object, ctypes.c_void_p]

#: Slack given to chunk buffers with --slack (bytes after the declared size).
SLACK = 1 << 16
#: What unwritten chunk data and extra hold (refilled before reuse).
FILL = 0xA5


def make_place(lib, params):
    """The place object: (capsule, params, lib); the tuple keeps both alive."""
    fn = ctypes.cast(lib.diff_place, ctypes.c_void_p).value
    capsule = _capsule_new(fn, ctypes.addressof(SIGNATURE), None)
    if _capsule_set_context(capsule, ctypes.addressof(params)) != 0:
        raise RuntimeError("PyCapsule_SetContext failed")
    return (capsule, params, lib)


def pcap_file(link, records):
    """A classic pcap file: records are (captured bytes, original length)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, link)]
    for i, (data, orig) in enumerate(records):
        out.append(struct.pack("<IIII", 1_700_000_000 + i // 1000, (i % 1000) * 1000, len(data), orig))
        out.append(data)
    return b"".join(out)


def _mode(name):
    return getattr(spead2.recv.StreamStatConfig.Mode, name)


def run_job(job, lib, slack, full, tmpdir):
    layout = job["layout"]
    sc = job["stream"]
    config = spead2.recv.StreamConfig(
        max_heaps=sc["max_heaps"],
        substreams=sc["substreams"],
        allow_out_of_order=sc["allow_out_of_order"],
        stop_on_stop_item=sc["stop_on_stop_item"],
        stream_id=sc["stream_id"],
        memcpy=sc.get("memcpy", 0),
        explicit_start=sc.get("explicit_start", False),
    )
    roles = {}
    for name, mode, role in job["custom_stats"]:
        roles[role] = config.add_stat(name, _mode(mode))
    n_next = config.next_stat_index()
    # Where the chunk stream will put its own statistics (after the custom ones).
    chunk_stat_index = {"too_old_heaps": n_next, "rejected_heaps": n_next + 1}

    params = DiffParams()
    for name, value in job["params"].items():
        setattr(params, name, value)
    params.stat_counter = roles.get("counter", -1)
    params.stat_max = roles.get("max", -1)
    params.stat_reject = roles.get("reject", -1)
    params.stat_calls = roles.get("calls", -1)
    poke = job.get("poke")
    if poke is None:
        params.stat_poke = -1
    elif poke in chunk_stat_index:
        params.stat_poke = chunk_stat_index[poke]
    else:
        params.stat_poke = getattr(spead2.recv.stream_stat_indices, poke.upper())

    cc = job["chunk"]
    chunk_config = spead2.recv.ChunkStreamConfig(
        items=cc["items"],
        max_chunks=cc["max_chunks"],
        place=make_place(lib, params),
        max_heap_extra=cc["max_heap_extra"],
    )
    if cc["presence"]:
        chunk_config.enable_packet_presence(cc["presence"])

    data_ring = spead2.recv.ChunkRingbuffer(job["data_ring"])
    n_chunks = cc["max_chunks"] + job["data_ring"] + 2
    free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
    pool = spead2.ThreadPool(1)
    stream = spead2.recv.ChunkRingStream(pool, config, chunk_config, data_ring, free_ring)
    if poke in chunk_stat_index:
        assert stream.config.get_stat_index(poke) == chunk_stat_index[poke]

    data_size = layout["data_size"]
    present_size = layout["present_size"]
    extra_total = layout["extra_total"]
    for _ in range(n_chunks):
        # With --slack the buffers are bigger than declared (the reference's
        # out-of-range writes land there); only the declared part is reported.
        chunk = spead2.recv.Chunk(
            present=np.zeros(present_size + slack, np.uint8),
            data=np.full(data_size + slack, FILL, np.uint8),
            extra=np.full(extra_total + slack, FILL, np.uint8) if layout["with_extra"] else None,
        )
        stream.add_free_chunk(chunk)

    transport = job["transport"]
    if transport == "inproc":
        queue = spead2.InprocQueue()
        for p in job["packets"]:
            queue.add_packet(base64.b64decode(p))
        queue.stop()
        stream.add_inproc_reader(queue)
    elif transport == "buffer":
        blob = b"".join(base64.b64decode(p) for p in job["packets"])
        blob = np.frombuffer(blob, np.uint8).copy()
        stream.add_buffer_reader(blob)
    elif transport == "pcap":
        path = os.path.join(tmpdir, "job.pcap")
        with open(path, "wb") as f:
            f.write(pcap_file(job["link"], [(base64.b64decode(d), orig) for d, orig in job["records"]]))
        stream.add_udp_pcap_file_reader(path)
    else:
        raise ValueError(f"unknown transport {transport!r}")

    if sc.get("explicit_start", False):
        stream.start()

    slot = layout["slot_size"]
    hpc = layout["heaps_per_chunk"]
    chunks = []
    for chunk in data_ring:
        data = np.asarray(chunk.data)[:data_size]
        present = np.asarray(chunk.present)[:present_size]
        rec = {
            "id": chunk.chunk_id,
            "sid": chunk.stream_id,
            "present": present.tobytes().hex(),
        }
        if full:
            rec["data"] = data.tobytes().hex()
        else:
            rec["data"] = hashlib.sha256(data.tobytes()).hexdigest()[:16]
            rec["slots"] = [
                zlib.crc32(data[i * slot:(i + 1) * slot].tobytes()) for i in range(hpc)
            ]
        if chunk.extra is not None:
            rec["extra"] = np.asarray(chunk.extra)[:extra_total].tobytes().hex()
        chunks.append(rec)
        np.asarray(chunk.data)[:] = FILL
        if chunk.extra is not None:
            np.asarray(chunk.extra)[:] = FILL
        stream.add_free_chunk(chunk)
    stream.stop()
    stats = stream.stats
    return {"chunks": chunks, "stats": [[name, int(stats[name])] for name in stats.keys()]}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    slack = SLACK if "--slack" in sys.argv else 0
    full = "--full" in sys.argv
    job_file, so_path = args[:2]
    lib = ctypes.CDLL(so_path)
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="spead2-diff-") as tmpdir, open(job_file) as f:
        for line in f:
            if not line.strip():
                continue
            job = json.loads(line)
            key = job["key"]
            out.write(json.dumps({"begin": key}) + "\n")
            out.flush()
            faulthandler.dump_traceback_later(JOB_TIMEOUT, exit=True)
            try:
                result = run_job(job, lib, slack, full, tmpdir)
            except Exception as exc:  # reported, compared like any other outcome
                result = {"error": f"{type(exc).__name__}: {exc}"}
            faulthandler.cancel_dump_traceback_later()
            result["key"] = key
            out.write(json.dumps(result) + "\n")
            out.flush()
    out.write(json.dumps({"done": True, "version": spead2.__version__}) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
