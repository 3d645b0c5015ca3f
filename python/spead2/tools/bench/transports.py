"""The ways of getting the traffic into the stream (:data:`TRANSPORTS`): the
offline ones (a memory buffer, a pcap file) and the live ones (kernel UDP,
ibverbs) with a sender subprocess, and the search for the highest rate a
live transport takes without loss (:func:`rate_search`)."""

from __future__ import annotations

import contextlib
import socket

from .session import BenchError
from .traffic import FRAME_DST_PORT



class Transport:
    """One way of getting the traffic into the stream.

    Subclasses set ``name``, ``label`` and ``live`` and implement
    :meth:`available` and :meth:`run`.  Register them with :func:`register`.
    """

    name = ""
    label = ""
    live = False
    #: The ChunkRingStream (and ChunkStreamGroupMember) method it needs.
    reader = ""

    def __init__(self, ctx):
        self.ctx = ctx

    def available(self, impl, streams=None):
        """None if the transport can run under ``impl`` (into ``streams``
        group members, or one ChunkRingStream for None), else the reason it cannot."""
        if streams is not None:
            if not impl.info.get("groups"):
                return f"this spead2 ({impl.name}, {impl.info['version']}) has no ChunkStreamRingGroup"
            if self.reader and self.reader not in impl.info.get("group_readers", []):
                return (f"this spead2 ({impl.name}, {impl.info['version']}) has no "
                        f"ChunkStreamGroupMember.{self.reader}")
        if self.reader and self.reader not in impl.info["readers"]:
            return f"this spead2 ({impl.name}, {impl.info['version']}) has no {self.reader}"
        return None

    def worker_env(self):
        """Extra environment for the receiving worker."""
        return {}

    def session(self, impl):
        return self.ctx.session(impl, self)

    def receiver_args(self, streams):
        """The request fields that describe the receiver (stream or group)."""
        args = self.ctx.args
        return {"streams": streams, "lossless": args.eviction_mode == "lossless", "pin": args.pin}

    def run(self, impl, traffic, rate=None, n_packets=None, streams=None):
        """One measurement; returns the result dictionary."""
        raise NotImplementedError


TRANSPORTS = {}


def register(cls):
    TRANSPORTS[cls.name] = cls
    return cls


class OfflineTransport(Transport):
    def run(self, impl, traffic, rate=None, n_packets=None, streams=None):
        files = dict(self.ctx.traffic_files(traffic))
        if self.name == "pcap" and streams and streams > 1:
            files["pcap_parts"] = self.ctx.pcap_parts(traffic, streams)
        req = {"op": "offline", "transport": self.name, "traffic": traffic.as_dict(), "files": files,
               "reps": self.ctx.args.reps}
        req.update(self.receiver_args(streams))
        return self.session(impl).request(req, timeout=60 + traffic.n_packets * 1e-4 * self.ctx.args.reps)


@register
class BufferTransport(OfflineTransport):
    name = "buffer"
    label = "buffer (memory)"
    reader = "add_buffer_reader"


@register
class PcapTransport(OfflineTransport):
    name = "pcap"
    label = "pcap replay"
    reader = "add_udp_pcap_file_reader"


class LiveTransport(Transport):
    live = True
    send_mode = "udp"

    def start_args(self, impl, n):
        """Request fields for ``n`` receiving streams."""
        raise NotImplementedError

    def destinations(self, n):
        """Where the sender sends the packets of stream 0 .. n-1."""
        raise NotImplementedError

    def run(self, impl, traffic, rate=None, n_packets=None, streams=None):
        ctx = self.ctx
        n = streams or 1
        files = ctx.traffic_files(traffic)
        n_packets = traffic.n_packets if n_packets is None else n_packets
        worker = self.session(impl)
        sender = ctx.sender()
        req = {"op": "live_start", "transport": self.name, "traffic": traffic.as_dict()}
        req.update(self.receiver_args(streams))
        req.update(self.start_args(impl, n))
        worker.request(req, timeout=60)
        target = {"mode": self.send_mode, "dests": [list(d) for d in self.destinations(n)],
                  "bind": ctx.args.send_interface or ""}
        try:
            sent = sender.request(
                dict(target, op="send", files=files, rate_pps=rate or 0, n_packets=n_packets,
                     packets_per_heap=traffic.packets_per_heap),
                timeout=120 + (n_packets / rate if rate else 0))
            worker.request({"op": "live_wait", "packets_sent": sent["packets_sent"],
                            "t_send_start": sent["t_send_start"], "t_send_end": sent["t_send_end"],
                            "idle": 0.25, "timeout": 30}, timeout=90)
            for _ in range(3):
                sender.request(dict(target, op="send_stop", addr_bits=traffic.addr_bits,
                                    heap_cnt=traffic.heaps + 1), timeout=30)
                result = worker.request({"op": "live_finish", "wait": 2.0}, timeout=60)
                if result["stopped"]:
                    break
            else:
                result = worker.request({"op": "live_finish", "force": True}, timeout=60)
        except BenchError:
            with contextlib.suppress(BenchError):
                worker.request({"op": "live_finish", "force": True}, timeout=30)
            raise
        result["send_rate_pps"] = sent["send_rate_pps"]
        result["send_errors"] = sent["send_errors"]
        result["requested_rate_pps"] = rate
        result["sender_gso"] = sent["gso"]
        if streams is not None:
            for member, count in zip(result["members"], sent["member_packets_sent"]):
                member["packets_sent"] = count
        return result


def _free_udp_ports(n):
    """``n`` different free UDP ports on 127.0.0.1."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def _free_udp_port():
    return _free_udp_ports(1)[0]


def _udp_buffer_size():
    """The receive buffer to ask for: 8 MiB, or what the kernel allows."""
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            return max(1 << 20, min(8 << 20, int(f.read())))
    except (OSError, ValueError):
        return 8 << 20


@register
class UdpTransport(LiveTransport):
    name = "udp"
    label = "kernel UDP (loopback)"
    reader = "add_udp_reader"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.ports = []

    def available(self, impl, streams=None):
        reason = super().available(impl, streams)
        if reason:
            return reason
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
        except OSError as exc:
            return f"cannot bind a UDP socket on 127.0.0.1: {exc}"
        return None

    def start_args(self, impl, n):
        # Fresh ports for every run: a lingering socket cannot steal packets.
        self.ports = _free_udp_ports(n)
        return {"ports": self.ports, "bind": "127.0.0.1", "buffer_size": _udp_buffer_size()}

    def destinations(self, n):
        return [("127.0.0.1", port) for port in self.ports[:n]]


@register
class IbvTransport(LiveTransport):
    name = "ibverbs"
    label = "ibverbs"
    reader = "add_udp_ibv_reader"

    def __init__(self, ctx):
        super().__init__(ctx)
        args = ctx.args
        self.real = bool(args.ibv_interface)
        self.label = "ibverbs" if self.real else "ibverbs (emulated)"
        self.wire_port = None
        self.library = None
        self.reason = None
        if self.real:
            self.interface = args.ibv_interface
            self.endpoint = args.ibv_endpoint or (args.ibv_interface, FRAME_DST_PORT)
            self.send_mode = "udp"
        else:
            self.interface = "127.0.0.1"
            self.endpoint = ("127.0.0.1", FRAME_DST_PORT)
            self.send_mode = "frames"

    def available(self, impl, streams=None):
        reason = super().available(impl, streams)
        if reason or self.real:
            return reason
        if impl.name != "ours":
            return "the reference cannot use the emulated device"
        if self.library is None and self.reason is None:
            self.library, self.reason = self.ctx.emulator_library()
        return self.reason

    def worker_env(self):
        if self.real:
            return {}
        if self.wire_port is None:
            self.wire_port = _free_udp_port()
        return {
            "SPEAD2_IBV_LIBRARY_OVERRIDE": self.library,
            "SPEAD2_EMU_INTERFACE": "127.0.0.1",
            "SPEAD2_EMU_WIRE": f"udp:127.0.0.1:{self.wire_port}",
        }

    def endpoints(self, n):
        """Stream m listens on the endpoint's port + m (the emulated wire's
        frames for stream m carry that UDP destination port)."""
        host, port = self.endpoint
        return [(host, port + m) for m in range(n)]

    def start_args(self, impl, n):
        return {"endpoints": [[list(e)] for e in self.endpoints(n)], "interface": self.interface,
                "buffer_size": self.ctx.args.ibv_buffer_size}

    def destinations(self, n):
        if self.real:
            return self.endpoints(n)
        return [("127.0.0.1", self.wire_port)] * n





#: Every transport, in the order they are measured.
TRANSPORT_NAMES = tuple(TRANSPORTS)


def rate_search(transport, impl, traffic, first, args, progress, streams=None):
    """Highest rate (packets/s) at which the transport loses nothing.

    ``first`` is the measurement with the sender at full speed.  If it lost
    nothing, the answer is the sender's own rate (the receiver kept up with
    everything the sender could do).  Otherwise a bisection between 0 and
    the sender's full speed, starting at the rate the receiver managed, with
    at most ``args.rate_steps`` steps of about ``args.step_time`` seconds,
    stops when the bracket is narrower than ``args.rate_tolerance``.
    """
    full = first["send_rate_pps"]
    if _lossless(first):
        return {"packets_per_s": full, "sender_limited": True, "steps": []}
    lo, hi = 0.0, full
    guess = min(first["packets_per_s"] * 0.95, full * 0.9)
    if guess <= 0:
        guess = full / 2
    steps = []
    for i in range(args.rate_steps):
        progress(f"[{transport.ctx.step}/{transport.ctx.total}] {transport.label} [{impl.name}] "
                 f"{traffic.packet_size} B: rate search step "
                 f"{i + 1}/{args.rate_steps} at {guess / 1e3:.0f} kpkt/s")
        n = traffic.packets_for(args.step_time, guess)
        r = transport.run(impl, traffic, rate=guess, n_packets=n, streams=streams)
        ok = _lossless(r)
        achieved = min(guess, r["send_rate_pps"])
        steps.append({"rate_pps": guess, "send_rate_pps": r["send_rate_pps"], "packets": n,
                      "heaps_sent": r["heaps_sent"], "heaps_complete": r["heaps_complete"], "lossless": ok})
        if ok:
            lo = max(lo, achieved)
        else:
            # (a loss below a rate already found lossless is noise: it ends the search)
            hi = max(lo, min(hi, achieved))
        if hi - lo < args.rate_tolerance * hi:
            break
        guess = (lo + hi) / 2 if lo > 0 else hi / 2
        if any(abs(guess - s["rate_pps"]) < args.rate_tolerance * guess / 2 for s in steps):
            # The sender cannot reach the rates in between (it shares the CPUs
            # with the receiver): asking again would give the same answer.
            break
    return {"packets_per_s": lo, "sender_limited": False, "steps": steps}


def _lossless(r):
    return r["heaps_complete"] >= r["heaps_sent"] and r["payload_errors"] == 0


