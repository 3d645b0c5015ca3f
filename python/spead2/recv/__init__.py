"""Receiving SPEAD streams: heap at a time (:class:`Stream`) or into chunks."""

from collections.abc import Mapping as _Mapping
from collections.abc import Sequence as _Sequence

from .. import _decode, _spead2
from .._spead2 import recv as _recv

Chunk = _recv.Chunk
ChunkRingbuffer = _recv.ChunkRingbuffer
ChunkRingPair = _recv.ChunkRingPair
ChunkStreamConfig = _recv.ChunkStreamConfig
ChunkStreamGroupConfig = _recv.ChunkStreamGroupConfig
ChunkStreamGroupMember = _recv.ChunkStreamGroupMember
_Stream = _recv._Stream  # base of every stream class (readers, stats, start, stop)
StreamConfig = _recv.StreamConfig
RingStreamConfig = _recv.RingStreamConfig
HeapBase = _recv.HeapBase
Heap = _recv.Heap
IncompleteHeap = _recv.IncompleteHeap
RawItem = _recv.RawItem
StreamStatConfig = _recv.StreamStatConfig
stream_stat_indices = _recv.stream_stat_indices
# Always present; in a build without the rdma-core headers, add_udp_ibv_reader
# raises RuntimeError saying so (spead2_ibv_check reports it too).
UdpIbvConfig = _recv.UdpIbvConfig

# The core statistics, as the C++ core defines them (a fresh StreamConfig has
# exactly these, in index order).
_CORE_STATS = tuple(c.name for c in _recv.StreamConfig().stats)


class StreamStats:
    """A snapshot of a stream's statistics.

    Behaves like a mapping from statistic name to value, and can also be
    indexed by position (see :mod:`~spead2.recv.stream_stat_indices`).  The
    nine core statistics are also attributes.  Two snapshots with the same
    statistics can be combined with ``+`` (counters add, maxima take the
    larger value).
    """

    __slots__ = ("_config", "_values", "_index")

    def __init__(self, config=None, values=None):
        if config is None:
            config = StreamConfig().stats
        self._config = list(config)
        self._index = {c.name: i for i, c in enumerate(self._config)}
        if values is None:
            values = [0] * len(self._config)
        if len(values) != len(self._config):
            raise ValueError("values and config have different lengths")
        self._values = list(values)

    @property
    def config(self):
        return list(self._config)

    def _position(self, key):
        if isinstance(key, str):
            try:
                return self._index[key]
            except KeyError:
                raise KeyError(key) from None
        index = int(key)
        if index < 0 or index >= len(self._values):
            raise IndexError(f"statistic index {key} out of range")
        return index

    def __getitem__(self, key):
        return self._values[self._position(key)]

    def __setitem__(self, key, value):
        self._values[self._position(key)] = int(value)

    def __contains__(self, name):
        return name in self._index

    def get(self, name, default=None):
        index = self._index.get(name)
        return default if index is None else self._values[index]

    def keys(self):
        return [c.name for c in self._config]

    def values(self):
        return list(self._values)

    def items(self):
        return list(zip(self.keys(), self._values))

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self._values)

    def __eq__(self, other):
        if not isinstance(other, StreamStats):
            return NotImplemented
        return self._config == other._config and self._values == other._values

    def _combine(self, other):
        if not isinstance(other, StreamStats):
            return NotImplemented
        if self._config != other._config:
            raise ValueError("cannot combine statistics with different configurations")
        return [c.combine(a, b) for c, a, b in zip(self._config, self._values, other._values)]

    def __add__(self, other):
        values = self._combine(other)
        if values is NotImplemented:
            return values
        return StreamStats(self._config, values)

    def __iadd__(self, other):
        values = self._combine(other)
        if values is NotImplemented:
            return values
        self._values = values
        return self

    def __repr__(self):
        inner = ", ".join(f"{k}={v}" for k, v in self.items())
        return f"StreamStats({inner})"


def _core_stat_property(index, name):
    def getter(self):
        return self._values[index]

    def setter(self, value):
        self._values[index] = int(value)

    return property(getter, setter, doc=f"The ``{name}`` statistic.")


for _i, _name in enumerate(_CORE_STATS):
    setattr(StreamStats, _name, _core_stat_property(_i, _name))
del _i, _name

_Mapping.register(StreamStats)


def _stats(self) -> StreamStats:
    """A snapshot of the stream's statistics (a new object on each access)."""
    return StreamStats(self.config.stats, self._stats_values())


# Every stream class (ChunkRingStream, ChunkStreamGroupMember) has it.
_Stream.stats = property(_stats)


# Heaps: the flavour and descriptors are built in Python (spead2.Flavour is a
# Python class; descriptors are decoded by spead2._decode).
HeapBase.flavour = property(_decode.heap_flavour, doc="The heap's :class:`spead2.Flavour`.")
Heap.get_descriptors = _decode.heap_descriptors


class Stream(_recv.Stream):
    """Stream that delivers heaps one at a time through a ringbuffer.

    Complete (contiguous) heaps are :class:`Heap` objects; with
    ``RingStreamConfig(contiguous_only=False)`` incomplete ones arrive as
    :class:`IncompleteHeap`.  :meth:`get` raises :exc:`spead2.Stopped` once
    the stream has ended and every heap has been taken; iterating yields
    heaps until then.
    """

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.get()
        except _spead2.Stopped:
            raise StopIteration from None


class ChunkRingStream(_recv.ChunkRingStream):
    """Stream that writes heaps into chunks taken from and returned to ringbuffers.

    See the chunking receiver reference for the parameters.
    """


class ChunkStreamRingGroup(_recv.ChunkStreamRingGroup):
    """Several streams (members) filling one sequence of chunks.

    Chunks come from `free_ringbuffer` and completed ones go to
    `data_ringbuffer`.  Members are added with :meth:`emplace_back`; the group
    is a sequence of its members.
    """

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __reversed__(self):
        for i in range(len(self) - 1, -1, -1):
            yield self[i]

    def __contains__(self, value):
        return any(member is value for member in self)

    def count(self, value):
        return sum(1 for member in self if member is value)

    def index(self, value, start=0, stop=None):
        n = len(self)
        start, stop, _ = slice(start, stop).indices(n)
        for i in range(start, stop):
            if self[i] is value:
                return i
        raise ValueError(f"{value!r} is not in the group")


_Sequence.register(ChunkStreamRingGroup)


__all__ = [
    "Chunk",
    "ChunkRingbuffer",
    "ChunkRingPair",
    "ChunkRingStream",
    "ChunkStreamConfig",
    "ChunkStreamGroupConfig",
    "ChunkStreamGroupMember",
    "ChunkStreamRingGroup",
    "Heap",
    "IncompleteHeap",
    "RingStreamConfig",
    "Stream",
    "StreamConfig",
    "StreamStatConfig",
    "StreamStats",
    "stream_stat_indices",
    "UdpIbvConfig",
]
