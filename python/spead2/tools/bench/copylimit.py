"""The copy limit: the packet rate a receiver would reach if copying the heap
payload bytes into its chunks were its only work.

Measured as numpy copies of the same number of bytes as the traffic's heap
payload, from the packets as they lie in memory (read cyclically) into a
ring of chunk buffers of the same total size as the receiver's, one chunk
after the other.  spead2_bench (:meth:`.worker.Worker.cmd_copy_limit`) and
``bench/bench_chunk.py`` measure it with this one function, in the same run
as the receivers, so each transport can be read as a fraction of what the
machine can copy at all.  Standard library at import; numpy when measuring.
"""

import time


def copy_seconds(source, payload_bytes, chunks):
    """Seconds to copy ``payload_bytes`` bytes from ``source`` (a uint8
    array, read from the start again when it runs out) into the buffers
    ``chunks`` (uint8 arrays), each filled in turn and the ring reused."""
    import numpy as np

    if source.size == 0 or not chunks or min(c.size for c in chunks) == 0:
        raise ValueError("the copy limit needs a non-empty source and non-empty chunks")
    start = time.perf_counter()
    done = 0
    i = 0
    while done < payload_bytes:
        pos = done % source.size
        dst = chunks[i % len(chunks)]
        n = min(dst.size, payload_bytes - done, source.size - pos)
        np.copyto(dst[:n], source[pos:pos + n])
        done += n
        i += 1
    return time.perf_counter() - start


def measure(source, payload_bytes, chunks, packets, reps=1):
    """The fastest of ``reps`` copies, as rates for ``packets`` packets
    carrying ``payload_bytes`` bytes of heap payload."""
    seconds = min(copy_seconds(source, payload_bytes, chunks) for _ in range(max(1, reps)))
    seconds = max(seconds, 1e-9)
    return {
        "seconds": seconds,
        "packets_per_s": packets / seconds,
        "payload_gbps": payload_bytes * 8 / seconds / 1e9,
    }
