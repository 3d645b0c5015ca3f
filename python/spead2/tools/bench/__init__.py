"""Compare the receive transports on the same SPEAD traffic.

Usage::

    spead2_bench [options]
    python -m spead2.tools.bench [options]

One traffic pattern (heap size, packet size, number of heaps, flavour) is
generated once per packet size and fed through every available transport into
the same chunk placement (a correlator-like layout: heaps are placed by their
timestamp and frequency items, ``channels`` heaps per timestamp):

``buffer``
    the packets, concatenated in memory (``add_buffer_reader``);
``pcap``
    a classic pcap file of Ethernet/IPv4/UDP frames (``add_udp_pcap_file_reader``);
``udp``
    kernel UDP over the loopback interface (``add_udp_reader``), from a sender
    in another process;
``ibverbs``
    ``add_udp_ibv_reader`` on a real device (``--ibv-interface``), or else on
    the emulated test device (labelled "ibverbs (emulated)"): the one shipped
    in the package (``spead2.tools.ibv_emulator``), else one built from
    ``tests/ibv_emulator`` of a source tree.  Its wire is a UDP socket
    carrying one Ethernet frame per datagram.

With ``--streams N`` the receiver is a ``ChunkStreamRingGroup`` of N members
instead of one ``ChunkRingStream``: heap i goes to member i mod N (N memory
buffers, N capture files, N UDP ports, N ibverbs endpoints), each member on a
``ThreadPool(1)`` of its own, pinned to a CPU (``--pin``).  ``--streams
plain,1,2,4`` measures the plain stream and each group size in turn, and adds
a table of each group against the plain stream (the cost of the group).
``--rounds`` repeats everything, ours and the reference taking turns, and
reports the spread.

Every measurement runs in a worker subprocess (so the receiver's CPU time is
its own and ibverbs can be set up through environment variables); the live
transports get their packets from a sender subprocess that replays the
generated packets, optionally at a fixed rate.  For the live transports a
bounded search looks for the highest rate without loss.  With
``--compare-reference`` the same measurements run under the reference spead2
4.5.1 (in a virtualenv of its own) and the table gets ratio columns.

The package, by job:

``traffic``
    the traffic pattern and its generation (packets, pcap file);
``worker``
    the receiving side of one measurement (runs under ours or the reference);
``sender``
    replays the generated packets over UDP;
``copylimit``
    the copy limit: the packet rate if copying the heap payload were a
    receiver's only work (measured by the worker);
``session``
    the line-by-line JSON requests between the driver and those subprocesses;
``transports``
    the ways into the stream, and the lossless rate search;
``context``
    the driver's state: traffic files, subprocesses, the emulated device;
``run``
    measuring everything, rounds and ratios;
``report``
    the table and the plot;
``cli``
    the command line (``spead2_bench``, ``python -m spead2.tools.bench``).

The worker and the sender are started as ``python -c`` scripts that load
this directory by path under another package name (:func:`session.load_package`),
so a reference interpreter that cannot import this package runs the same
code.  Every module other than ``cli`` imports only the standard library at
module level and the package's other modules relatively (``cli`` is the
driver's alone).
"""

def main(argv=None):
    """The ``spead2_bench`` command (see :mod:`.cli`)."""
    from .cli import main as cli_main

    return cli_main(argv)
