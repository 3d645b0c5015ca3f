"""Sending SPEAD heaps from :mod:`asyncio` code.

The stream classes here take the same constructor arguments as those in
:mod:`spead2.send`.  :meth:`~UdpStream.async_send_heap` queues a heap and
returns a future for the number of bytes sent; the (blocking) sends run in
order on one worker thread per stream, so heaps go out in the order they
were queued.
"""

import asyncio as _asyncio
import concurrent.futures as _futures
import functools as _functools
import weakref as _weakref

from .._spead2 import send as _send
from . import _unwrap, _wrap_stream_class, _is_stream_class


def _get_loop():
    try:
        return _asyncio.get_running_loop()
    except RuntimeError:
        return _asyncio.get_event_loop_policy().get_event_loop()


class _AsyncSendMixin:
    __slots__ = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        executor = _futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spead2-send")
        self._executor = executor
        # Let the worker thread go when the stream is garbage-collected.
        _weakref.finalize(self, executor.shutdown, wait=False)

    def _blocking_send(self, heap, cnt, substream_index):
        return super().send_heap(_unwrap(heap), cnt, substream_index)

    def async_send_heap(self, heap, cnt=-1, substream_index=0):
        """Queue `heap` for sending and return a future for the number of
        bytes sent.

        This is not a coroutine: the heap is queued before it returns, so
        heaps are sent in the order of the calls.

        Parameters
        ----------
        heap : :class:`spead2.send.Heap`
            Heap to send
        cnt : int, optional
            Heap cnt to send it with (default: automatic)
        substream_index : int, optional
            Substream on which to send it
        """
        call = _functools.partial(self._blocking_send, heap, cnt, substream_index)
        return _get_loop().run_in_executor(self._executor, call)

    def _blocking_flush(self):
        base_flush = getattr(super(), "flush", None)
        if base_flush is not None:
            base_flush()

    def async_flush(self):
        """A future that completes once every heap queued so far is sent."""
        return _get_loop().run_in_executor(self._executor, self._blocking_flush)

    def send_heap(self, heap, cnt=-1, substream_index=0):
        """Send `heap` synchronously, after any heaps already queued."""
        return self._executor.submit(self._blocking_send, heap, cnt, substream_index).result()

    def flush(self):
        """Block until every heap queued so far is sent."""
        self._executor.submit(self._blocking_flush).result()


__all__ = []
for _name in dir(_send):
    if _name.startswith("_"):
        continue
    _obj = getattr(_send, _name)
    if _is_stream_class(_obj):
        globals()[_name] = _wrap_stream_class(_name, _obj, _AsyncSendMixin, __name__)
        __all__.append(_name)
del _name, _obj
