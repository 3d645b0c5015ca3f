"""The receiving side of one measurement (``python -c`` with
:data:`.session.LOADER`, under ours or the reference): the benchmark's chunk
placement and a consumer that checks every heap (:class:`Receiver`), and the
requests the driver sends (:class:`Worker`).  spead2, numpy and numba are
imported when first needed, from whatever spead2 the interpreter has."""

from __future__ import annotations

import importlib.util
import os
import resource
import sys
import threading
import time

from . import copylimit
from .session import serve
from .traffic import FRAME_OVERHEAD, FREQUENCY_ID, TIMESTAMP_ID, Traffic, member_share



def _rusage_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _thread_ids():
    """The kernel thread IDs of this process (empty where /proc is missing)."""
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _thread_cpu(tids):
    """CPU seconds used so far by the threads ``tids`` of this process, or None.

    From ``/proc/self/task/TID/schedstat`` (nanoseconds), else from the
    user and system ticks of ``/proc/self/task/TID/stat`` (1/100 s)."""
    if not tids:
        return None
    total = 0.0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
            continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
    return total


def _thread_switches(tids):
    """[voluntary, involuntary] context switches so far of the threads ``tids``, or None.

    A voluntary switch is a thread going to sleep: a group member waiting
    for the others (LOSSLESS) or for a free chunk, a reader waiting for data."""
    if not tids:
        return None
    total = [0, 0]
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total[0] += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        total[1] += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return total


def _cpu_diff(a, b):
    """What happened between two :meth:`Receiver.cpu` readings."""
    def sub(x, y):
        if x is None or y is None:
            return None
        if isinstance(x, list):
            return [q - p for p, q in zip(x, y)]
        return y - x

    return (b[0] - a[0], [sub(x, y) for x, y in zip(a[1], b[1])], [sub(x, y) for x, y in zip(a[2], b[2])])


def _add_stats(stats_list):
    """The statistics of several streams, combined as the package combines them
    (``StreamStats + StreamStats``: counters add, maxima take the larger value)."""
    total = stats_list[0]
    try:
        for s in stats_list[1:]:
            total = total + s
        return {k: int(v) for k, v in total.items()}
    except TypeError:  # pragma: no cover - a package without StreamStats.__add__
        out = {}
        for s in stats_list:
            for k, v in s.items():
                out[k] = max(out.get(k, 0), int(v)) if k.startswith("max_") else out.get(k, 0) + int(v)
        return out


class Receiver:
    """The benchmark's placement, plus a consumer.

    ``streams`` None: one ChunkRingStream.  ``streams`` N: a
    ChunkStreamRingGroup of N members (heap i is for member i mod N), in
    ``lossless`` (or LOSSY) eviction mode.  Every stream has a ThreadPool(1)
    of its own; with ``cpus``, stream i's thread is pinned to
    ``cpus[i % len(cpus)]``.  The thread IDs of the pools are recorded so
    that the CPU time of each stream can be read.
    """

    #: Chunks in the stream's window (by default), and free chunks beyond them.
    MAX_CHUNKS = 4
    N_FREE = 4

    def __init__(self, worker, traffic, streams=None, lossless=True, cpus=(), max_chunks=MAX_CHUNKS):
        import numpy as np
        import spead2
        import spead2.recv

        self.np = np
        self.spead2 = spead2
        self.traffic = traffic
        self.n_streams = streams
        self.place = worker.place_for(traffic)
        n_chunks = max_chunks + self.N_FREE
        self.data_ring = spead2.recv.ChunkRingbuffer(n_chunks)
        self.free_ring = spead2.recv.ChunkRingbuffer(n_chunks)
        self.thread_ids = []
        self.cores = []
        self.pools = []

        def pool(i):
            core = [cpus[i % len(cpus)]] if cpus else []
            before = _thread_ids()
            p = spead2.ThreadPool(1, core)
            self.thread_ids.append(sorted(_thread_ids() - before))
            self.cores.append(core[0] if core else None)
            self.pools.append(p)
            return p

        def chunk_config():
            return spead2.recv.ChunkStreamConfig(
                items=self.place.items,
                max_chunks=max_chunks,
                place=self.place,
            )

        if streams is None:
            self.owner = spead2.recv.ChunkRingStream(
                pool(0), spead2.recv.StreamConfig(max_heaps=4), chunk_config(), self.data_ring, self.free_ring)
            self.streams = [self.owner]
        else:
            modes = spead2.recv.ChunkStreamGroupConfig.EvictionMode
            group_config = spead2.recv.ChunkStreamGroupConfig(
                max_chunks=max_chunks, eviction_mode=modes.LOSSLESS if lossless else modes.LOSSY)
            self.owner = spead2.recv.ChunkStreamRingGroup(group_config, self.data_ring, self.free_ring)
            self.streams = [self.owner.emplace_back(pool(i), spead2.recv.StreamConfig(max_heaps=4), chunk_config())
                            for i in range(streams)]
        for present, data in worker.chunk_memory(traffic, n_chunks):
            self.owner.add_free_chunk(spead2.recv.Chunk(present=present, data=data))
        self.complete = 0
        self.member_complete = [0] * len(self.streams)
        self.chunks = 0
        self.payload_errors = 0
        self.error = None
        self.thread = None

    def packets(self):
        """Packets received so far, by all streams."""
        return sum(int(s.stats["packets"]) for s in self.streams)

    def cpu(self):
        """(process CPU seconds, [CPU seconds of each stream's thread, or None],
        [[voluntary, involuntary] context switches of each stream's thread, or None])."""
        return (_rusage_cpu(), [_thread_cpu(t) for t in self.thread_ids],
                [_thread_switches(t) for t in self.thread_ids])

    def consume(self):
        np = self.np
        t = self.traffic
        hpc = t.heaps_per_chunk
        n = len(self.streams)
        try:
            for chunk in self.data_ring:
                present = np.asarray(chunk.present)
                idx = np.flatnonzero(present)
                self.complete += len(idx)
                self.chunks += 1
                if len(idx):
                    data = np.asarray(chunk.data).reshape(hpc, t.heap_size)
                    heap = chunk.chunk_id * hpc + idx  # the heap's number in the traffic
                    expect = ((heap + 1) % 251).astype(np.uint8)
                    self.payload_errors += int(np.count_nonzero(data[idx, 0] != expect))
                    self.payload_errors += int(np.count_nonzero(data[idx, -1] != expect))
                    if n > 1:
                        for m, c in enumerate(np.bincount(heap % n, minlength=n)):
                            self.member_complete[m] += int(c)
                    else:
                        self.member_complete[0] += len(idx)
                try:
                    self.owner.add_free_chunk(chunk)
                except Exception:  # the stream is stopping
                    pass
        except Exception as exc:  # pragma: no cover - reported to the driver
            self.error = f"consumer: {exc!r}"

    def start_consumer(self):
        self.thread = threading.Thread(target=self.consume, daemon=True)
        self.thread.start()

    def stop(self):
        """Stop; the statistics of each stream (complete only after stop())."""
        self.owner.stop()
        if self.thread is not None:
            self.thread.join(30)
        return [s.stats for s in self.streams]

    def result(self, seconds, cpu, stats, packets_sent=None, heaps_sent=None, packets=None):
        """The measurement.  ``cpu``: the difference of two :meth:`cpu` readings;
        ``stats``: what :meth:`stop` returned."""
        t = self.traffic
        per_stream = [{k: int(v) for k, v in s.items()} for s in stats]
        total = _add_stats(stats) if len(stats) > 1 else per_stream[0]
        packets_sent = t.n_packets if packets_sent is None else packets_sent
        heaps_sent = t.heaps if heaps_sent is None else heaps_sent
        if packets is None:
            packets = total.get("packets", 0)
        seconds = max(seconds, 1e-9)
        process_cpu, thread_cpu, switches = cpu
        rx_cpu = None if None in thread_cpu else sum(thread_cpu)
        rx_switches = None if None in switches else [sum(x[0] for x in switches), sum(x[1] for x in switches)]
        out = {
            "seconds": seconds,
            "cpu_seconds": process_cpu,
            "packets_sent": packets_sent,
            "packets_received": packets,
            "heaps_sent": heaps_sent,
            "heaps_complete": self.complete,
            "heaps_lost": max(0, heaps_sent - self.complete),
            "payload_errors": self.payload_errors,
            "chunks": self.chunks,
            "packets_per_s": packets / seconds,
            "payload_gbps": self.complete * t.heap_size * 8 / seconds / 1e9,
            "cpu_s_per_mpkt": process_cpu / max(packets, 1) * 1e6,
            "streams": self.n_streams,
            "receiver_cpu_seconds": rx_cpu,
            "receiver_cpu_s_per_mpkt": None if rx_cpu is None else rx_cpu / max(packets, 1) * 1e6,
            "receiver_context_switches": rx_switches,
            "cores": self.cores,
            "stats": total,
            "error": self.error or (f"{self.payload_errors} heap(s) with the wrong payload or in the wrong place"
                                    if self.payload_errors else None),
        }
        if self.n_streams is not None:
            n = self.n_streams
            members = []
            for m, (st, c, sw) in enumerate(zip(per_stream, thread_cpu, switches)):
                sent = member_share(heaps_sent, n, m)
                p = st.get("packets", 0)
                members.append({
                    "core": self.cores[m],
                    "packets": p,
                    "heaps_sent": sent,
                    "heaps_complete": self.member_complete[m],
                    "heaps_lost": max(0, sent - self.member_complete[m]),
                    "cpu_seconds": c,
                    "cpu_s_per_mpkt": None if c is None else c / max(p, 1) * 1e6,
                    "context_switches": sw,
                    "stats": st,
                })
            out["members"] = members
        return out


class Worker:
    """The worker's state between requests (compiled placements, chunk memory,
    traffic in memory, the live receiver) and its requests (``cmd_*``)."""

    def __init__(self):
        self.places = {}
        self.memory = {}
        self.buffers = {}
        self.live = None
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            self.cpus = []

    def place_for(self, t):
        key = (t.heap_size, t.channels, t.freq_step, t.ts_step, t.t_per_chunk)
        if key not in self.places:
            self.places[key] = make_place(t)
        return self.places[key]

    def chunk_memory(self, t, n):
        import numpy as np

        key = (t.heaps_per_chunk, t.heap_size)
        have = self.memory.get(key, [])
        while len(have) < n:
            # Touch the pages now, not during the measurement.
            have.append((np.zeros(t.heaps_per_chunk, np.uint8),
                         np.full(t.heaps_per_chunk * t.heap_size, 0xFF, np.uint8)))
        self.memory = {key: have}
        return have[:n]

    def receiver(self, t, req):
        pin = req.get("pin", True)
        cpus = self.cpus if pin is True else (pin or ())
        return Receiver(self, t, streams=req.get("streams"), lossless=req.get("lossless", True), cpus=cpus)

    def buffer_sources(self, t, path, streams):
        """The packets of ``path``: one buffer, or one per member (heap i in buffer i mod N)."""
        import numpy as np

        key = (path, streams or 1)
        if key not in self.buffers:
            # Only one traffic pattern at a time.
            self.buffers = {k: v for k, v in self.buffers.items() if k[0] == path}
            whole = self.buffers.get((path, 1))
            if whole is None:
                with open(path, "rb") as f:
                    whole = [f.read()]
                self.buffers[(path, 1)] = whole
            if key[1] > 1:
                heaps = np.frombuffer(whole[0], np.uint8).reshape(t.heaps, -1)
                self.buffers[key] = [heaps[m::key[1]].tobytes() for m in range(key[1])]
        return self.buffers[key]

    # Commands -------------------------------------------------------------

    def cmd_hello(self, req):
        import spead2
        import spead2.recv

        def readers(cls):
            return sorted(a for a in dir(cls) if a.startswith("add_") and a.endswith("_reader"))

        member = getattr(spead2.recv, "ChunkStreamGroupMember", None)
        return {
            "version": spead2.__version__,
            "file": os.path.realpath(spead2.__file__),
            "python": sys.executable,
            "readers": readers(spead2.recv.ChunkRingStream),
            "groups": hasattr(spead2.recv, "ChunkStreamRingGroup") and member is not None,
            "group_readers": readers(member) if member is not None else [],
            "cpus": self.cpus,
        }

    def cmd_offline(self, req):
        """buffer or pcap: ``reps`` runs over the whole traffic; the fastest is returned."""
        t = Traffic.from_dict(req["traffic"])
        transport = req["transport"]
        streams = req.get("streams")
        if transport == "buffer":
            sources = self.buffer_sources(t, req["files"]["raw"], streams)
        elif streams and streams > 1:
            sources = req["files"]["pcap_parts"]
        else:
            sources = [req["files"]["pcap"]]
        runs = []
        for _ in range(max(1, req.get("reps", 1))):
            rx = self.receiver(t, req)
            cpu0 = rx.cpu()
            start = time.perf_counter()
            for stream, source in zip(rx.streams, sources):
                if transport == "buffer":
                    stream.add_buffer_reader(source)
                else:
                    stream.add_udp_pcap_file_reader(source)
            rx.consume()
            seconds = time.perf_counter() - start
            cpu1 = rx.cpu()
            # Statistics are complete only after stop().
            stats = rx.stop()
            cpu = _cpu_diff(cpu0, cpu1)
            runs.append(rx.result(seconds, cpu, stats))
            del rx
        best = min(runs, key=lambda r: r["seconds"])
        best = dict(best)
        best["runs"] = [{"seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
                         "receiver_cpu_seconds": r["receiver_cpu_seconds"]} for r in runs]
        return best

    def cmd_copy_limit(self, req):
        """The copy limit of the traffic (:mod:`.copylimit`): its heap payload
        copied from the packets in memory into the chunk buffers a receiver
        of this worker uses (the same number, the same memory); the fastest
        of ``reps`` copies."""
        import numpy as np

        t = Traffic.from_dict(req["traffic"])
        source = np.frombuffer(self.buffer_sources(t, req["files"]["raw"], None)[0], np.uint8)
        chunks = [data for _, data in self.chunk_memory(t, Receiver.MAX_CHUNKS + Receiver.N_FREE)]
        return copylimit.measure(source, t.heaps * t.heap_size, chunks, t.n_packets, req.get("reps", 1))

    def cmd_live_start(self, req):
        """udp or ibverbs: set up the stream(s) and wait for the sender."""
        import spead2.recv

        if self.live is not None:
            self.live.stop()
            self.live = None
        t = Traffic.from_dict(req["traffic"])
        rx = self.receiver(t, req)
        max_size = max(t.packet_size + 64, 9200)
        for m, stream in enumerate(rx.streams):
            if req["transport"] == "udp":
                stream.add_udp_reader(req["ports"][m], max_size=max_size, buffer_size=req["buffer_size"],
                                      bind_hostname=req["bind"])
            else:
                config = spead2.recv.UdpIbvConfig(
                    endpoints=[tuple(e) for e in req["endpoints"][m]],
                    interface_address=req["interface"],
                    max_size=max_size + FRAME_OVERHEAD,
                    buffer_size=req["buffer_size"],
                    comp_vector=req.get("comp_vector", 0),
                )
                stream.add_udp_ibv_reader(config)
        rx.start_consumer()
        rx.cpu0 = rx.cpu()
        self.live = rx
        return {"ready": True}

    def cmd_live_wait(self, req):
        """After the sender is done: wait until every packet arrived or none came for a while.

        Chunks reach the data ring only when the stream ends by itself (user
        stop() discards those in flight, in both packages), so the driver
        then has an end-of-stream heap sent to every stream (:meth:`cmd_live_finish`)."""
        rx = self.live
        expected = req["packets_sent"]
        idle = req.get("idle", 0.25)
        now = time.monotonic()
        deadline = now + req.get("timeout", 30)
        # Packets that arrived before this request count as arriving by the
        # time the sender finished; later ones at the time they are seen.
        t_end = req["t_send_end"]
        last = rx.packets()
        last_change = now
        while last < expected and now - last_change <= idle and now < deadline:
            time.sleep(0.002)
            now = time.monotonic()
            packets = rx.packets()
            if packets != last:
                last = packets
                last_change = t_end = now
        cpu1 = rx.cpu()
        rx.cpu_used = _cpu_diff(rx.cpu0, cpu1)
        rx.seconds = t_end - req["t_send_start"]
        rx.data_packets = last  # the end-of-stream packets come later
        rx.expected = expected
        return {"packets": last}

    def cmd_live_finish(self, req):
        """Wait for the end-of-stream heaps (``force``: give up and stop); report."""
        rx = self.live
        if rx is None:
            raise RuntimeError("no live stream")
        rx.thread.join(req.get("wait", 2.0))
        if rx.thread.is_alive() and not req.get("force"):
            return {"stopped": False}
        self.live = None
        stats = rx.stop()
        if not hasattr(rx, "seconds"):
            return {"stopped": False, "stats": _add_stats(stats)}
        if req.get("force") and rx.error is None:
            rx.error = "the end-of-stream heap never arrived (chunks in flight were dropped)"
        result = rx.result(rx.seconds, rx.cpu_used, stats, packets_sent=rx.expected,
                           heaps_sent=rx.expected // rx.traffic.packets_per_heap,
                           packets=min(rx.data_packets, rx.expected))
        result["stopped"] = True
        return result

    def serve(self):
        serve(self)
        if self.live is not None:
            self.live.stop()
        return 0


def load_numba_place():
    """spead2/recv/numba_place.py of the package this file is in, loaded by
    path: the standard numba callbacks, the same code under ours and under
    the reference (whose spead2 does not have that module)."""
    name = "_spead2_bench_numba_place"
    if name not in sys.modules:
        spead2_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        spec = importlib.util.spec_from_file_location(name, os.path.join(spead2_dir, "recv", "numba_place.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def make_place(t):
    """The placement of traffic ``t``: heaps by timestamp and frequency item,
    ``t.channels`` per timestamp, ``t.t_per_chunk`` timestamps per chunk."""
    return load_numba_place().timestamp_channel(
        heap_size=t.heap_size, channels=t.channels, channel_step=t.freq_step, timestamp_step=t.ts_step,
        timestamps_per_chunk=t.t_per_chunk, timestamp_id=TIMESTAMP_ID, channel_id=FREQUENCY_ID)


def main():
    return Worker().serve()
