"""The standard place callbacks, compiled by numba: heap counter and
timestamp × channel.

They place heaps exactly as the built-in placements of
:mod:`spead2.recv.place` of the same name and arguments do (the tests
compare the two), with every parameter compiled in as a constant.  Use them
where a numba callback is wanted: as the starting point of a callback of
your own, or to compare the built-in placements against.  Each function
returns a :class:`Placement`, a :class:`scipy.LowLevelCallable` that also
carries what the stream must be configured with::

    placement = spead2.recv.numba_place.timestamp_channel(
        heap_size=8192, channels=4, channel_step=256, timestamp_step=8192)
    config = spead2.recv.ChunkStreamConfig(
        items=placement.items, max_heap_extra=placement.max_heap_extra,
        max_chunks=4, place=placement)

The callback reads the items by position, in the order of
``placement.items``.

This file imports only numba, numpy, scipy and what spead2 4.5.1 also has
(:data:`spead2.recv.numba.chunk_place_data`,
:func:`spead2.numba.intp_to_voidptr`), so the benchmarks load it by path
under the reference spead2 as well, and both packages run the same callback.
"""

import numba
import numpy as np
import scipy
from numba import types

from spead2 import HEAP_CNT_ID as _HEAP_CNT_ID
from spead2 import HEAP_LENGTH_ID as _HEAP_LENGTH_ID
from spead2.numba import intp_to_voidptr
from spead2.recv.numba import chunk_place_data

#: Bytes of ``chunk.extra`` each heap uses when ``extra=True``: its key as an int64.
EXTRA_BYTES = 8

_SIGNATURE = types.void(types.CPointer(chunk_place_data), types.uintp)


def _check(positive=(), nonnegative=()):
    """Raise ValueError as spead2.recv.place does for the same bad parameters."""
    for name, value in positive:
        if value <= 0:
            raise ValueError(f"{name} must be positive")
    for name, value in nonnegative:
        if value < 0:
            raise ValueError(f"{name} must not be negative")


@numba.njit
def _items(data, n):
    """The first ``n`` item values of the heap (``data``: the carray of one chunk_place_data)."""
    return numba.carray(intp_to_voidptr(data[0].items), n, dtype=np.int64)


@numba.njit
def _place(data, chunk_id, index, heap_size, key, with_extra):
    """Send the heap to ``chunk_id`` at heap index ``index``; with
    ``with_extra``, write ``key`` into its slot of ``chunk.extra``."""
    data[0].chunk_id = chunk_id
    data[0].heap_index = index
    data[0].heap_offset = index * heap_size
    if with_extra:
        out = numba.carray(intp_to_voidptr(data[0].extra), 1, dtype=np.int64)
        out[0] = key
        data[0].extra_offset = index * EXTRA_BYTES
        data[0].extra_size = EXTRA_BYTES


class Placement(scipy.LowLevelCallable):
    """A compiled place callback with the stream configuration it needs:
    ``items`` (for ``ChunkStreamConfig.items``), ``max_heap_extra``,
    ``heaps_per_chunk`` and ``heap_size`` (for the chunks), and ``cfunc``,
    the numba cfunc (kept alive with it)."""

    def __new__(cls, cfunc, items, heaps_per_chunk, heap_size, extra):
        self = super().__new__(cls, cfunc.ctypes, signature="void (void *, size_t)")
        self.cfunc = cfunc
        self.items = list(items)
        self.heaps_per_chunk = heaps_per_chunk
        self.heap_size = heap_size
        self.max_heap_extra = EXTRA_BYTES if extra else 0
        return self


def heap_counter(*, heap_size, heaps_per_chunk, cnt_first=1, cnt_step=1, chunk_id_bias=0, extra=False):
    """Place by heap counter, as :func:`spead2.recv.place.heap_counter`: heap
    ``cnt_first + i * cnt_step`` goes to chunk ``i // heaps_per_chunk +
    chunk_id_bias`` at heap index ``i % heaps_per_chunk``.  Items:
    ``[HEAP_CNT, HEAP_LENGTH]``.  Bad parameters raise :exc:`ValueError`."""
    heap_size = int(heap_size)
    hpc = int(heaps_per_chunk)
    cnt_first = int(cnt_first)
    cnt_step = int(cnt_step)
    bias = int(chunk_id_bias)
    with_extra = bool(extra)
    _check(positive=[("heap_size", heap_size), ("heaps_per_chunk", hpc), ("cnt_step", cnt_step)],
           nonnegative=[("cnt_first", cnt_first)])

    def place(data_ptr, data_size):
        data = numba.carray(data_ptr, 1)
        items = _items(data, 2)
        cnt = items[0]
        if items[1] != heap_size or cnt < cnt_first:
            return
        offset = cnt - cnt_first
        if offset % cnt_step != 0:
            return
        position = offset // cnt_step
        _place(data, position // hpc + bias, position % hpc, heap_size, cnt, with_extra)

    cfunc = numba.cfunc(_SIGNATURE, nopython=True)(place)
    return Placement(cfunc, [_HEAP_CNT_ID, _HEAP_LENGTH_ID], hpc, heap_size, with_extra)


def timestamp_channel(*, heap_size, channels, channel_step, timestamp_step, timestamps_per_chunk=1,
                      first_timestamp=0, timestamp_id=0x1600, channel_id=0x4103, chunk_id_bias=0, extra=False):
    """Place by a timestamp item and a channel item, as
    :func:`spead2.recv.place.timestamp_channel`: ``t = (timestamp -
    first_timestamp) // timestamp_step`` and ``c = channel // channel_step``
    go to chunk ``t // timestamps_per_chunk + chunk_id_bias`` at heap index
    ``(t % timestamps_per_chunk) * channels + c``.  Items: ``[timestamp_id,
    channel_id, HEAP_LENGTH]``.  Bad parameters raise :exc:`ValueError`."""
    heap_size = int(heap_size)
    n_channels = int(channels)
    channel_step = int(channel_step)
    timestamp_step = int(timestamp_step)
    tpc = int(timestamps_per_chunk)
    first_timestamp = int(first_timestamp)
    bias = int(chunk_id_bias)
    with_extra = bool(extra)
    _check(positive=[("heap_size", heap_size), ("channels", n_channels), ("channel_step", channel_step),
                     ("timestamp_step", timestamp_step), ("timestamps_per_chunk", tpc)],
           nonnegative=[("first_timestamp", first_timestamp)])

    def place(data_ptr, data_size):
        data = numba.carray(data_ptr, 1)
        items = _items(data, 3)
        timestamp = items[0]
        channel = items[1]
        if items[2] != heap_size or timestamp < first_timestamp or channel < 0:
            return
        if channel % channel_step != 0:
            return
        c = channel // channel_step
        if c >= n_channels:
            return
        t = (timestamp - first_timestamp) // timestamp_step
        _place(data, t // tpc + bias, (t % tpc) * n_channels + c, heap_size, timestamp, with_extra)

    cfunc = numba.cfunc(_SIGNATURE, nopython=True)(place)
    return Placement(cfunc, [timestamp_id, channel_id, _HEAP_LENGTH_ID], tpc * n_channels, heap_size, with_extra)


__all__ = ["EXTRA_BYTES", "Placement", "heap_counter", "timestamp_channel"]
