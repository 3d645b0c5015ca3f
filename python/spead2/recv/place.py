"""Built-in place callbacks for the common layouts (no numba, scipy or JIT).

Each function returns a :class:`Placement`: pass it as
``ChunkStreamConfig.place``, with ``items=placement.items`` and
``max_heap_extra=placement.max_heap_extra``::

    placement = spead2.recv.place.timestamp_channel(
        heap_size=8192, channels=4, channel_step=256, timestamp_step=8192,
        timestamps_per_chunk=1)
    config = spead2.recv.ChunkStreamConfig(
        items=placement.items, max_heap_extra=placement.max_heap_extra,
        max_chunks=4, place=placement)

They are implemented in C++ and place heaps exactly as the numba callbacks
of the same names and arguments in :mod:`spead2.recv.numba_place` do.  Write
your own callback (numba or C) for
anything else: other item layouts, checks on other items, custom statistics,
packet presence with more than one flag per heap, or placements that depend
on more than one key.
"""

from .. import HEAP_CNT_ID, HEAP_LENGTH_ID
from .._spead2 import recv as _recv

#: Bytes of ``chunk.extra`` each heap uses when ``extra=True``: its key as an int64.
EXTRA_BYTES = 8


class Placement(tuple):
    """A place callback (a tuple whose first element is the PyCapsule, as
    ``ChunkStreamConfig.place`` expects), with what its stream must be
    configured with.  Keeps its parameters alive."""

    def __new__(cls, params, items, heaps_per_chunk, heap_size, extra, description):
        self = super().__new__(cls, (params._capsule(), params))
        self.items = list(items)
        self.heaps_per_chunk = heaps_per_chunk
        self.heap_size = heap_size
        self.max_heap_extra = EXTRA_BYTES if extra else 0
        self._description = description
        return self

    def __repr__(self):
        return f"spead2.recv.place.{self._description}"


def heap_counter(*, heap_size, heaps_per_chunk, cnt_first=1, cnt_step=1, chunk_id_bias=0, extra=False):
    """Place by heap counter: heap ``cnt_first + i * cnt_step`` is position
    ``i``, in chunk ``i // heaps_per_chunk + chunk_id_bias`` at heap index
    ``i % heaps_per_chunk`` (byte offset ``heap_index * heap_size``).

    Heaps whose HEAP_LENGTH is not `heap_size`, or whose counter is below
    `cnt_first` or off the step, are rejected.  With `extra`, the heap
    counter is written as an int64 into ``chunk.extra`` at the heap's index.
    """
    params = _recv._CounterPlace(heap_size=heap_size, heaps_per_chunk=heaps_per_chunk, cnt_first=cnt_first,
                                 cnt_step=cnt_step, chunk_id_bias=chunk_id_bias, extra=extra)
    return Placement(params, [HEAP_CNT_ID, HEAP_LENGTH_ID], heaps_per_chunk, heap_size, extra,
                     f"heap_counter(heap_size={heap_size}, heaps_per_chunk={heaps_per_chunk}, "
                     f"cnt_first={cnt_first}, cnt_step={cnt_step}, chunk_id_bias={chunk_id_bias}, extra={extra})")


def timestamp_channel(*, heap_size, channels, channel_step, timestamp_step, timestamps_per_chunk=1,
                      first_timestamp=0, timestamp_id=0x1600, channel_id=0x4103, chunk_id_bias=0, extra=False):
    """Place by a timestamp item and a channel (frequency) item, as
    correlator and beamformer streams are laid out: a heap with timestamp
    ``ts`` and first channel ``ch`` has ``t = (ts - first_timestamp) //
    timestamp_step`` and ``c = ch // channel_step``; it goes to chunk
    ``t // timestamps_per_chunk + chunk_id_bias`` at heap index
    ``(t % timestamps_per_chunk) * channels + c`` (byte offset ``heap_index *
    heap_size``); a chunk holds ``timestamps_per_chunk * channels`` heaps.

    Heaps whose HEAP_LENGTH is not `heap_size`, whose timestamp is below
    `first_timestamp`, or whose channel is negative, off the step or beyond
    `channels`, are rejected.  With `extra`, the timestamp is written as an
    int64 into ``chunk.extra`` at the heap's index.  `timestamp_id` and
    `channel_id` are the item IDs (both immediate items).
    """
    params = _recv._TimestampChannelPlace(
        heap_size=heap_size, channels=channels, channel_step=channel_step, timestamp_step=timestamp_step,
        first_timestamp=first_timestamp, timestamps_per_chunk=timestamps_per_chunk,
        chunk_id_bias=chunk_id_bias, extra=extra)
    return Placement(params, [timestamp_id, channel_id, HEAP_LENGTH_ID], timestamps_per_chunk * channels,
                     heap_size, extra,
                     f"timestamp_channel(heap_size={heap_size}, channels={channels}, channel_step={channel_step}, "
                     f"timestamp_step={timestamp_step}, timestamps_per_chunk={timestamps_per_chunk}, "
                     f"first_timestamp={first_timestamp}, timestamp_id={timestamp_id:#x}, "
                     f"channel_id={channel_id:#x}, chunk_id_bias={chunk_id_bias}, extra={extra})")


__all__ = ["EXTRA_BYTES", "Placement", "heap_counter", "timestamp_channel"]
