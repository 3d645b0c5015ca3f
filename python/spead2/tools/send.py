"""Send synthetic SPEAD traffic, for testing receivers.

Usage::

    spead2_send [options] HOST:PORT [HOST:PORT ...]
    spead2_send [options] --tcp HOST:PORT
    spead2_send [options] --pcap FILE [HOST:PORT ...]
    spead2_send [options] --ibv --bind ADDRESS HOST:PORT [HOST:PORT ...]
    python -m spead2.tools.send ...

Every data heap looks like the output of a correlator or an F-engine: two
immediate items and a payload.

=========  ==========  ===================================================
item ID    name        value of data heap ``i`` (``i`` = 0, 1, 2, ...)
=========  ==========  ===================================================
0x1600     timestamp   ``first + (i // channels) * timestamp_step``
0x4103     frequency   ``(i % channels) * channel_step``
0x3300     data        ``heap_size`` bytes; byte ``j`` is ``(i + j) % 256``
=========  ==========  ===================================================

So the channel item cycles over ``channels`` values and the timestamp
advances once per full cycle of channels.  A receiver recovers the heap index
from the two immediates, ``i = (timestamp - first) // timestamp_step *
channels + frequency // channel_step``, and can then check every payload byte
(:func:`expected_payload` computes it).  The immediates are
``heap_address_bits`` wide; the timestamp wraps around at
``2**heap_address_bits``.

With several destinations (the substreams of one stream), data heap ``i``
goes to destination ``i % len(destinations)`` (round robin); the descriptor
heap (``--descriptors``) and the end-of-stream heap go to every destination.
With ``--group-mode``, data heaps are handed over ``--group-size`` at a time
(default: one per destination) in one ``send_heaps`` call, their packets
interleaved as the mode says (``round-robin``: one packet of each heap in
turn; ``serial``: heap after heap).

A HOST is a name, an IPv4 address or an IPv6 address (``[::1]:8888`` or
``::1:8888``).  ``--tcp`` sends over one TCP connection instead of UDP.
``--ibv`` sends with ibverbs (kernel bypass, IPv4 multicast destinations
only) from the interface whose address ``--bind`` gives; ``--buffer`` is
then the size of the registered send buffer and ``--ttl`` the IP TTL.

Heaps are sent until ``--heaps`` data heaps have gone, or forever
(``--heaps -1``, the default) until Ctrl-C, which stops cleanly: the heap
being sent is finished and the end-of-stream heap is still sent (unless
``--no-end``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import time

import numpy as np

import spead2
import spead2.send

# The argument types shared with the other tools, under the names this file uses.
from ._cli import endpoint as _endpoint
from ._cli import flavour_bits as _flavour_bits
from ._cli import nonnegative_float as _nonnegative_float
from ._cli import nonnegative_int as _nonnegative_int
from ._cli import positive_int as _positive_int

TIMESTAMP_ID = 0x1600
CHANNEL_ID = 0x4103
PAYLOAD_ID = 0x3300

DEFAULT_HEAP_SIZE = 8192
DEFAULT_PACKET_SIZE = 1472
DEFAULT_ADDR_BITS = 48
DEFAULT_CHANNELS = 4
DEFAULT_TIMESTAMP_STEP = 1
#: Destination of the frames written with --pcap when no HOST:PORT is given.
DEFAULT_PCAP_DESTINATION = ("127.0.0.1", 8888)
#: The largest UDP payload over IPv4.
MAX_UDP_PAYLOAD = 65507
#: SPEAD packet header, then the item pointers of the first packet of a data
#: heap: HEAP_CNT, HEAP_LENGTH, PAYLOAD_OFFSET, PAYLOAD_LENGTH, timestamp,
#: frequency and data.  A packet must hold them and at least one payload byte.
_HEADER_SIZE = 8
_POINTER_SIZE = 8
_DATA_HEAP_POINTERS = 4 + 3
MIN_PACKET_SIZE = _HEADER_SIZE + _POINTER_SIZE * _DATA_HEAP_POINTERS + 1


def expected_payload(index: int, heap_size: int) -> np.ndarray:
    """The payload of data heap `index`: byte ``j`` is ``(index + j) % 256``."""
    return ((np.arange(heap_size, dtype=np.int64) + index) % 256).astype(np.uint8)


class Traffic:
    """The heaps that ``spead2_send`` sends (see the module documentation).

    Parameters
    ----------
    heap_size : int
        Payload bytes per data heap
    channels : int
        Number of values the frequency item cycles over
    channel_step : int
        Difference between successive frequency values (default:
        ``heap_size // 4``, as if a heap held ``heap_size // 4`` channels of
        4-byte samples, but at least 1)
    timestamp_step : int
        Increment of the timestamp after each full cycle of channels
    first_timestamp : int
        Timestamp of the first data heap
    flavour : :class:`spead2.Flavour`
        Protocol flavour; its ``heap_address_bits`` is also the width of the
        immediate items
    """

    def __init__(
        self,
        heap_size=DEFAULT_HEAP_SIZE,
        channels=DEFAULT_CHANNELS,
        channel_step=None,
        timestamp_step=DEFAULT_TIMESTAMP_STEP,
        first_timestamp=0,
        flavour=None,
    ):
        if flavour is None:
            flavour = spead2.Flavour(4, 64, DEFAULT_ADDR_BITS, 0)
        if channel_step is None:
            channel_step = max(1, heap_size // 4)
        self.heap_size = heap_size
        self.channels = channels
        self.channel_step = channel_step
        self.timestamp_step = timestamp_step
        self.first_timestamp = first_timestamp
        self.flavour = flavour
        bits = flavour.heap_address_bits
        self._mask = (1 << bits) - 1
        self.items = spead2.send.ItemGroup(flavour=flavour)
        self._timestamp = self.items.add_item(
            TIMESTAMP_ID, "timestamp", "Timestamp of the heap (advances once per cycle of channels)",
            shape=(), format=[("u", bits)],
        )
        self._channel = self.items.add_item(
            CHANNEL_ID, "frequency", "First channel of the heap",
            shape=(), format=[("u", bits)],
        )
        self._payload = self.items.add_item(
            PAYLOAD_ID, "data", "Synthetic payload: byte j of data heap i is (i + j) % 256",
            shape=(heap_size,), dtype=np.uint8,
        )
        # Every payload is a window on one ramp, so heaps need no copies.
        self._ramp = (np.arange(heap_size + 256, dtype=np.int64) % 256).astype(np.uint8)

    def check(self):
        """Raise ValueError if the traffic cannot be represented in the flavour."""
        bits = self.flavour.heap_address_bits
        if self.heap_size < 1:
            raise ValueError("the heap size must be at least 1 byte")
        if self.heap_size > self._mask:
            raise ValueError(f"a {self.heap_size}-byte heap does not fit in {bits} heap address bits")
        if self.channels < 1:
            raise ValueError("there must be at least one channel")
        if self.channel_step < 0 or self.timestamp_step < 0 or self.first_timestamp < 0:
            raise ValueError("channel step, timestamp step and first timestamp must not be negative")
        if (self.channels - 1) * self.channel_step > self._mask:
            raise ValueError(f"channel values up to {(self.channels - 1) * self.channel_step} "
                             f"do not fit in {bits} bits")
        if self.first_timestamp > self._mask:
            raise ValueError(f"the first timestamp does not fit in {bits} bits")

    def timestamp(self, index: int) -> int:
        """Value of the timestamp item of data heap `index` (wraps at 2**heap_address_bits)."""
        return (self.first_timestamp + index // self.channels * self.timestamp_step) & self._mask

    def channel(self, index: int) -> int:
        """Value of the frequency item of data heap `index`."""
        return index % self.channels * self.channel_step

    def index(self, timestamp: int, channel: int) -> int:
        """The data heap index with these item values (before the timestamp wraps)."""
        cycle = (timestamp - self.first_timestamp) // self.timestamp_step if self.timestamp_step else 0
        return cycle * self.channels + channel // self.channel_step

    def payload(self, index: int) -> np.ndarray:
        """Payload of data heap `index` (a read-only view; see :func:`expected_payload`)."""
        start = index % 256
        view = self._ramp[start:start + self.heap_size]
        view.flags.writeable = False
        return view

    def heap(self, index: int, repeat_pointers: bool = False) -> spead2.send.Heap:
        """Data heap `index` (with its item pointers in every packet if `repeat_pointers`)."""
        heap = spead2.send.Heap(self.flavour)
        heap.repeat_pointers = repeat_pointers
        self._timestamp.value = self.timestamp(index)
        heap.add_item(self._timestamp)
        self._channel.value = self.channel(index)
        heap.add_item(self._channel)
        self._payload.value = self.payload(index)
        heap.add_item(self._payload)
        return heap

    def descriptor_heap(self) -> spead2.send.Heap:
        """A heap with the descriptors of the three items (and no values)."""
        heap = spead2.send.Heap(self.flavour)
        for item in self.items.values():
            heap.add_descriptor(item)
        return heap

    def end_heap(self) -> spead2.send.Heap:
        """The end-of-stream heap."""
        heap = spead2.send.Heap(self.flavour)
        heap.add_end()
        return heap


def count_packets(heap, flavour, max_packet_size) -> int:
    """Packets that `heap` is cut into (by sending it to a BytesStream)."""
    stream = spead2.send.BytesStream(spead2.ThreadPool(), spead2.send.StreamConfig(max_packet_size=max_packet_size))
    stream.send_heap(heap)
    data = stream.getvalue()
    bits = flavour.heap_address_bits
    mask = (1 << bits) - 1
    pos = packets = 0
    while pos < len(data):
        n_items = int.from_bytes(data[pos + 6:pos + 8], "big")
        length = 0
        for k in range(n_items):
            start = pos + _HEADER_SIZE + _POINTER_SIZE * k
            pointer = int.from_bytes(data[start:start + _POINTER_SIZE], "big")
            if (pointer >> bits) & ((1 << (63 - bits)) - 1) == spead2.PAYLOAD_LENGTH_ID:
                length = pointer & mask
        pos += _HEADER_SIZE + _POINTER_SIZE * n_items + length
        packets += 1
    return packets


# --------------------------------------------------------------------------
# Command line


def _rate_method(text):
    try:
        return spead2.send.RateMethod[text.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate method (SW, HW or AUTO)") from None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="spead2_send",
        description="Send synthetic SPEAD heaps (timestamp, frequency and a payload with a known pattern) "
                    "over UDP or TCP (IPv4 or IPv6) or into a pcap file, for testing receivers.",
        epilog="Payload byte j of data heap i is (i + j) % 256; the heap index is recovered from the "
               "immediates as (timestamp - first) // timestamp_step * channels + frequency // channel_step.",
    )
    parser.add_argument("destinations", nargs="*", type=_endpoint, metavar="HOST:PORT",
                        help="UDP destination(s) (substreams); data heaps go to them in turn (with --tcp: the "
                             "one server to connect to; with --pcap: the addresses "
                             f"written into the frames, default {DEFAULT_PCAP_DESTINATION[0]}:"
                             f"{DEFAULT_PCAP_DESTINATION[1]})")
    parser.add_argument("--pcap", metavar="FILE", help="write the packets to a pcap file instead of sending them")

    data = parser.add_argument_group("traffic")
    data.add_argument("--heap-size", type=_positive_int, default=DEFAULT_HEAP_SIZE, metavar="BYTES",
                      help="payload bytes per data heap [%(default)s]")
    data.add_argument("--heaps", type=int, default=-1, metavar="N",
                      help="number of data heaps to send, -1 for no limit (stop with Ctrl-C) [%(default)s]")
    data.add_argument("--channels", type=_positive_int, default=DEFAULT_CHANNELS, metavar="N",
                      help="number of values the frequency item (0x4103) cycles over [%(default)s]")
    data.add_argument("--channel-step", type=_nonnegative_int, default=None, metavar="N",
                      help="difference between successive frequency values [heap size / 4]")
    data.add_argument("--timestamp-step", type=_nonnegative_int, default=DEFAULT_TIMESTAMP_STEP, metavar="N",
                      help="increment of the timestamp item (0x1600) per cycle of channels [%(default)s]")
    data.add_argument("--first-timestamp", type=_nonnegative_int, default=0, metavar="N",
                      help="timestamp of the first heap [%(default)s]")
    data.add_argument("--descriptors", action="store_true", help="send a descriptor heap first")
    data.add_argument("--repeat-pointers", action="store_true",
                      help="put the item pointers in every packet of a data heap, so that a receiver can "
                           "place a heap from whichever packet arrives first")
    data.add_argument("--no-end", action="store_true", help="do not send the end-of-stream heap")
    data.add_argument("--manifest", metavar="FILE",
                      help="write a JSON manifest of the data heaps (timestamp, frequency, SHA-256 of the "
                           "payload), as read by python -m spead2.tools.demo")

    proto = parser.add_argument_group("protocol and rate")
    bits = proto.add_mutually_exclusive_group()
    bits.add_argument("--addr-bits", type=int, default=None, metavar="BITS",
                      help=f"heap address bits (a multiple of 8 from 8 to 56) [{DEFAULT_ADDR_BITS}]")
    bits.add_argument("--flavour", type=_flavour_bits, default=None, metavar="64-XX",
                      help="protocol flavour, another way to give the heap address bits (e.g. 64-40)")
    proto.add_argument("--packet", type=int, default=DEFAULT_PACKET_SIZE, metavar="BYTES",
                       help="maximum packet size (SPEAD header included, UDP/IP excluded) [%(default)s]")
    proto.add_argument("--rate", type=_nonnegative_float, default=0.0, metavar="Gb/s",
                       help="sending rate in Gb/s of SPEAD packets, 0 for no limit [%(default)s]")
    proto.add_argument("--burst", type=_positive_int, default=None, metavar="BYTES",
                       help="bytes sent back to back before the rate limit applies "
                            f"[{spead2.send.StreamConfig.DEFAULT_BURST_SIZE}]")
    proto.add_argument("--burst-rate-ratio", type=float, default=None, metavar="RATIO",
                       help="rate at which a burst may catch up, relative to --rate "
                            f"[{spead2.send.StreamConfig.DEFAULT_BURST_RATE_RATIO}]")
    proto.add_argument("--rate-method", type=_rate_method, default=None, metavar="METHOD",
                       help="how the rate is enforced: SW, HW or AUTO (no transport here has hardware "
                            "pacing, so all three pace in software) [AUTO]")
    proto.add_argument("--max-heaps", type=_positive_int, default=None, metavar="N",
                       help=f"heaps in flight at once [{spead2.send.StreamConfig.DEFAULT_MAX_HEAPS}]")
    proto.add_argument("--group-mode", choices=["round-robin", "serial"], default=None,
                       help="send data heaps in groups (send_heaps), their packets interleaved one per heap "
                            "in turn (round-robin) or heap after heap (serial) [one heap at a time]")
    proto.add_argument("--group-size", type=_positive_int, default=None, metavar="N",
                       help="data heaps per group with --group-mode [the number of destinations]")

    net = parser.add_argument_group("UDP and TCP")
    net.add_argument("--tcp", action="store_true", help="send over TCP to the one HOST:PORT (a TCP receiver)")
    net.add_argument("--connect-timeout", type=_nonnegative_float, default=None, metavar="SECONDS",
                     help="with --tcp: give up connecting after this long [as long as the kernel tries]")
    net.add_argument("--ttl", type=int, default=None,
                     help="multicast hops (multicast destinations only, IPv4 or IPv6)")
    net.add_argument("--bind", metavar="ADDRESS", default="",
                     help="local address to send from; with --ttl, the outgoing multicast interface: an IPv4 "
                          "address, or an interface index for IPv6 multicast")
    net.add_argument("--buffer", type=_positive_int, default=None, metavar="BYTES",
                     help=f"socket send buffer size [UDP {spead2.send.UdpStream.DEFAULT_BUFFER_SIZE}, "
                          f"TCP {spead2.send.TcpStream.DEFAULT_BUFFER_SIZE}]")
    net.add_argument("--no-gso", action="store_true", help="do not use UDP generic segmentation offload")

    _add_ibv_options(parser)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print a summary at the end (heaps, packets, bytes, achieved rate)")
    return parser


# ibverbs (--ibv): kept together here, apart from the other transports' options.
def _add_ibv_options(parser):
    ibv = parser.add_argument_group("ibverbs")
    ibv.add_argument("--ibv", action="store_true",
                     help="send with ibverbs (kernel bypass) to IPv4 multicast HOST:PORTs, from the interface "
                          "with the --bind address")
    ibv.add_argument("--ibv-vector", type=int, default=None, metavar="N",
                     help="with --ibv: completion vector to sleep on, or -1 to busy poll [0]")
    ibv.add_argument("--ibv-max-poll", type=_positive_int, default=None, metavar="N",
                     help="with --ibv: polls of the completion queue before sleeping "
                          f"[{spead2.send.UdpIbvConfig.DEFAULT_MAX_POLL}]")


def _check_ibv_args(parser, args):
    if not args.ibv:
        if args.ibv_vector is not None or args.ibv_max_poll is not None:
            parser.error("--ibv-vector and --ibv-max-poll apply to --ibv only")
        return
    if args.pcap is not None or args.tcp or args.no_gso:
        parser.error("--ibv does not combine with --pcap, --tcp or --no-gso")
    if not args.bind:
        parser.error("--ibv needs --bind ADDRESS: the IPv4 address of the interface to send from")


def _given(args, **options):
    """{keyword: value of args.<attribute>} for each keyword=attribute whose
    command-line option was given (is not None)."""
    return {key: getattr(args, attr) for key, attr in options.items() if getattr(args, attr) is not None}


def _make_ibv_stream(thread_pool, args, config):
    kwargs = {"endpoints": args.destinations, "interface_address": args.bind,
              **_given(args, buffer_size="buffer", ttl="ttl", comp_vector="ibv_vector", max_poll="ibv_max_poll")}
    return spead2.send.UdpIbvStream(thread_pool, config, spead2.send.UdpIbvConfig(**kwargs))


def _check_args(parser, args):
    _check_ibv_args(parser, args)
    if args.pcap is None and not args.destinations:
        parser.error("give at least one HOST:PORT destination, or --pcap FILE")
    if args.pcap is not None and (args.ttl is not None or args.bind or args.buffer is not None or args.no_gso
                                  or args.tcp):
        parser.error("--tcp, --ttl, --bind, --buffer and --no-gso do not apply to --pcap")
    if args.pcap is not None and any(":" in host for host, _ in args.destinations):
        parser.error("--pcap writes IPv4 frames: give IPv4 destinations")
    if args.tcp and len(args.destinations) != 1:
        parser.error("--tcp sends to exactly one HOST:PORT")
    if args.tcp and (args.ttl is not None or args.no_gso):
        parser.error("--ttl and --no-gso apply to UDP only, not to --tcp")
    if args.connect_timeout is not None and not args.tcp:
        parser.error("--connect-timeout applies to --tcp only")
    if args.group_size is not None and args.group_mode is None:
        parser.error("--group-size needs --group-mode")
    if args.burst_rate_ratio is not None and not args.burst_rate_ratio >= 1.0:
        parser.error("--burst-rate-ratio must be at least 1")
    addr_bits = args.flavour if args.flavour is not None else args.addr_bits
    if addr_bits is None:
        addr_bits = DEFAULT_ADDR_BITS
    if addr_bits % 8 != 0 or not 8 <= addr_bits <= 56:
        parser.error(f"heap address bits must be a multiple of 8 from 8 to 56, not {addr_bits}")
    args.addr_bits = addr_bits
    if args.heaps < -1:
        parser.error("--heaps must be -1 (no limit) or a number of heaps")
    if args.packet < MIN_PACKET_SIZE:
        parser.error(f"--packet {args.packet} is too small: a packet needs {MIN_PACKET_SIZE - 1} bytes of "
                     f"header and item pointers and at least one byte of payload (minimum {MIN_PACKET_SIZE})")
    if args.packet > MAX_UDP_PAYLOAD:
        parser.error(f"--packet {args.packet} is too large: the largest UDP payload is {MAX_UDP_PAYLOAD}")
    if args.ttl is not None and not 0 <= args.ttl <= 255:
        parser.error("--ttl must be between 0 and 255")


def _udp_kwargs(args):
    """Keyword arguments selecting the UdpStream constructor form (see spead2.send.UdpStream)."""
    kwargs = {"allow_gso": not args.no_gso, **_given(args, buffer_size="buffer", ttl="ttl")}
    if args.ttl is not None:
        if args.bind.isdigit():
            kwargs["interface_index"] = int(args.bind)
        elif args.bind:
            kwargs["interface_address"] = args.bind
    elif args.bind:
        kwargs["interface_address"] = args.bind
    return kwargs


def _make_stream(parser, args, config):
    thread_pool = spead2.ThreadPool()
    try:
        if args.pcap is not None:
            endpoints = args.destinations or [DEFAULT_PCAP_DESTINATION]
            return spead2.send.PcapFileStream(thread_pool, args.pcap, endpoints, config)
        if args.tcp:
            kwargs = {"interface_address": args.bind, "connect_timeout": args.connect_timeout,
                      **_given(args, buffer_size="buffer")}
            return spead2.send.TcpStream(thread_pool, args.destinations, config, **kwargs)
        if args.ibv:
            return _make_ibv_stream(thread_pool, args, config)
        return spead2.send.UdpStream(thread_pool, args.destinations, config, **_udp_kwargs(args))
    except (ValueError, OSError, RuntimeError, IndexError) as exc:
        where = args.pcap if args.pcap is not None else " ".join(f"{h}:{p}" for h, p in args.destinations)
        parser.error(f"cannot send to {where}: {exc}")


class _Counter:
    def __init__(self):
        self.data_heaps = 0
        self.heaps = 0
        self.packets = 0
        self.bytes = 0

    def add(self, sent_bytes, packets, data=False):
        self.heaps += 1
        self.packets += packets
        self.bytes += sent_bytes
        if data:
            self.data_heaps += 1


def _summary(counter, elapsed, interrupted):
    elapsed = max(elapsed, 1e-9)
    lines = [
        f"{'interrupted after' if interrupted else 'sent'} {counter.data_heaps} data heaps "
        f"({counter.heaps} heaps in all), {counter.packets} packets, {counter.bytes} bytes in {elapsed:.3f} s",
        f"achieved {counter.bytes * 8 / elapsed / 1e9:.4f} Gb/s, {counter.packets / elapsed:.0f} packets/s, "
        f"{counter.heaps / elapsed:.0f} heaps/s",
    ]
    return "\n".join(lines)


def _write_manifest(path, args, traffic, manifest_heaps):
    manifest = {
        "capture": args.pcap,
        "sender": f"spead2_send (spead2 {getattr(spead2, '__version__', '?')})",
        "flavour": f"SPEAD-64-{traffic.flavour.heap_address_bits}",
        "max_packet_size": args.packet,
        "heap_payload_bytes": traffic.heap_size,
        "items": {
            f"{TIMESTAMP_ID:#x}": "timestamp (immediate)",
            f"{CHANNEL_ID:#x}": "frequency (immediate)",
            f"{PAYLOAD_ID:#x}": "data (payload)",
        },
        "first_heap": "descriptors only" if args.descriptors else "data",
        "last_heap": "data" if args.no_end else "stream stop (CTRL_STREAM_STOP)",
        "heaps": manifest_heaps,
    }
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


class _StopRequest:
    """SIGINT handler: the first Ctrl-C asks the send loop to stop after the
    heap being sent; a second one interrupts at once."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def run(args, parser=None, out=None):
    """Send the traffic described by parsed `args`; returns the exit code."""
    parser = parser or build_parser()
    out = sys.stdout if out is None else out
    _check_args(parser, args)
    flavour = spead2.Flavour(4, 64, args.addr_bits, 0)
    traffic = Traffic(args.heap_size, args.channels, args.channel_step, args.timestamp_step,
                      args.first_timestamp, flavour)
    try:
        traffic.check()
    except ValueError as exc:
        parser.error(str(exc))
    config_kwargs = {"max_packet_size": args.packet, "rate": args.rate * 1e9 / 8,
                     **_given(args, burst_size="burst", burst_rate_ratio="burst_rate_ratio",
                              rate_method="rate_method", max_heaps="max_heaps")}
    if args.max_heaps is None and args.group_mode is not None:
        # A group must fit in the heaps allowed in flight.
        config_kwargs["max_heaps"] = max(spead2.send.StreamConfig.DEFAULT_MAX_HEAPS,
                                         args.group_size or len(args.destinations) or 1)
    config = spead2.send.StreamConfig(**config_kwargs)
    stream = _make_stream(parser, args, config)
    n_dest = stream.num_substreams
    group_mode = None
    if args.group_mode is not None:
        group_mode = {"round-robin": spead2.send.GroupMode.ROUND_ROBIN,
                      "serial": spead2.send.GroupMode.SERIAL}[args.group_mode]
    group_size = args.group_size or n_dest
    if group_mode is not None and group_size > config.max_heaps:
        parser.error(f"--group-size {group_size} is more than --max-heaps {config.max_heaps}")

    repeat = args.repeat_pointers
    data_packets = count_packets(traffic.heap(0, repeat), flavour, args.packet)
    counter = _Counter()
    manifest_heaps = [] if args.manifest else None
    stop = _StopRequest()
    # Signal handlers can only be installed from the main thread; elsewhere
    # (run() called from a thread) a KeyboardInterrupt still stops the loop.
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGINT, stop)
    interrupted = False
    start = time.perf_counter()
    try:
        try:
            if args.descriptors:
                heap = traffic.descriptor_heap()
                packets = count_packets(heap, flavour, args.packet)
                for sub in range(n_dest):
                    counter.add(stream.send_heap(heap, substream_index=sub), packets)
            index = 0
            while (args.heaps < 0 or index < args.heaps) and not stop.requested:
                if group_mode is None:
                    indices = [index]
                    sent = stream.send_heap(traffic.heap(index, repeat), substream_index=index % n_dest)
                else:
                    end = index + group_size if args.heaps < 0 else min(index + group_size, args.heaps)
                    indices = list(range(index, end))
                    refs = [spead2.send.HeapReference(traffic.heap(i, repeat), substream_index=i % n_dest)
                            for i in indices]
                    sent = stream.send_heaps(refs, group_mode)
                for i in indices:
                    # Bytes per heap: all data heaps have the same size.
                    counter.add(sent // len(indices), data_packets, data=True)
                    if manifest_heaps is not None:
                        manifest_heaps.append({
                            "timestamp": traffic.timestamp(i),
                            "frequency": traffic.channel(i),
                            "sha256": hashlib.sha256(traffic.payload(i).tobytes()).hexdigest(),
                        })
                index += len(indices)
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or stop.requested
        if not args.no_end:
            heap = traffic.end_heap()
            packets = count_packets(heap, flavour, args.packet)
            for sub in range(n_dest):
                counter.add(stream.send_heap(heap, substream_index=sub), packets)
        stream.flush()
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"spead2_send: error: sending failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    elapsed = time.perf_counter() - start
    del stream  # closes the socket or file
    if args.manifest:
        _write_manifest(args.manifest, args, traffic, manifest_heaps)
    if interrupted:
        print("spead2_send: interrupted", file=sys.stderr)
    if args.verbose:
        print(_summary(counter, elapsed, interrupted), file=out)
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return run(args, parser)


if __name__ == "__main__":
    sys.exit(main())
