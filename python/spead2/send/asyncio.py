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


def _chain(source, loop, future):
    """Copy the outcome of concurrent future `source` to asyncio `future`."""

    def copy(done):
        if future.done():
            return
        exc = done.exception()
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(done.result())

    source.add_done_callback(lambda done: loop.call_soon_threadsafe(copy, done))


class _AsyncSendMixin:
    __slots__ = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        executor = _futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spead2-send")
        self._executor = executor
        self._last_queued = None
        # Let the worker thread go when the stream is garbage-collected.
        _weakref.finalize(self, executor.shutdown, wait=False)

    def _queue(self, heaps, mode):
        """Reserve room for `heaps` (a HeapReferenceList) now and send them
        on the worker thread; returns the concurrent future."""
        self._reserve(len(heaps))
        return self._executor.submit(self._send_reserved, heaps, mode)

    def _async_queue(self, heaps, mode):
        loop = _get_loop()
        future = loop.create_future()
        try:
            source = self._queue(heaps, mode)
        except OSError as exc:
            # A full queue fails the future, as in the reference.
            future.set_exception(exc)
            return future
        _chain(source, loop, future)
        self._last_queued = future
        return future

    def async_send_heap(self, heap, cnt=-1, substream_index=0, rate=-1.0):
        """Queue `heap` for sending and return a future for the number of
        bytes sent.

        This is not a coroutine: the heap is queued before it returns, so
        heaps are sent in the order of the calls.  If more than
        ``StreamConfig.max_heaps`` heaps would be queued or in flight, the
        future fails with :exc:`BlockingIOError`.

        Parameters
        ----------
        heap : :class:`spead2.send.Heap`
            Heap to send
        cnt : int, optional
            Heap cnt to send it with (default: automatic)
        substream_index : int, optional
            Substream on which to send it
        rate : float, optional
            Rate at which to send it (default: the stream's rate)
        """
        ref = _send.HeapReference(heap, cnt=cnt, substream_index=substream_index, rate=rate)
        return self._async_queue(_send.HeapReferenceList([ref]), _send.GroupMode.SERIAL)

    def async_send_heaps(self, heaps, mode):
        """Queue a group of heaps (a :class:`~spead2.send.HeapReferenceList`
        or a list of :class:`~spead2.send.HeapReference`) for sending, with
        their packets interleaved as `mode` (a
        :class:`~spead2.send.GroupMode`) says.  Returns a future for the
        number of bytes sent."""
        if not isinstance(heaps, _send.HeapReferenceList):
            heaps = _send.HeapReferenceList(heaps)
        return self._async_queue(heaps, mode)

    async def async_flush(self):
        """Wait until the heaps queued before this call have been sent."""
        future = self._last_queued
        if future is not None:
            await _asyncio.wait([future])

    def send_heap(self, heap, cnt=-1, substream_index=0, rate=-1.0):
        """Send `heap` synchronously, after any heaps already queued."""
        ref = _send.HeapReference(heap, cnt=cnt, substream_index=substream_index, rate=rate)
        return self._queue(_send.HeapReferenceList([ref]), _send.GroupMode.SERIAL).result()

    def send_heaps(self, heaps, mode):
        """Send a group of heaps synchronously, after any heaps already queued."""
        if not isinstance(heaps, _send.HeapReferenceList):
            heaps = _send.HeapReferenceList(heaps)
        return self._queue(heaps, mode).result()

    def flush(self):
        """Block until every heap queued so far is sent."""
        base_flush = getattr(super(), "flush", None)
        self._executor.submit(base_flush if base_flush is not None else (lambda: None)).result()


#: The methods every stream class here adds (named in asyncio.pyi).
_AsyncStream = _AsyncSendMixin

__all__ = []
for _name in dir(_send):
    if _name.startswith("_"):
        continue
    _obj = getattr(_send, _name)
    if _is_stream_class(_obj):
        globals()[_name] = _wrap_stream_class(_name, _obj, _AsyncSendMixin, __name__)
        __all__.append(_name)
del _name, _obj


if "TcpStream" in globals():  # (a stand-in backend in the tests may have none)

    class TcpStream(globals()["TcpStream"]):
        """SPEAD over TCP, with asynchronous connection and sends.

        The constructor takes the same arguments as
        :class:`spead2.send.TcpStream`: a socket that is already connected, or
        endpoints to connect to (which blocks until connected).  Most code uses
        :meth:`connect` instead, which connects without blocking the event loop.
        """

        @classmethod
        async def connect(cls, *args, **kwargs):
            """Open a connection and return the stream.

            The arguments are those of the constructor of
            :class:`spead2.send.TcpStream` (``thread_pool, endpoints, config,
            buffer_size, interface_address``, and ``connect_timeout``).  A
            connection that cannot be made raises :exc:`OSError`
            (:exc:`ConnectionRefusedError` when nothing listens,
            :exc:`TimeoutError` when `connect_timeout` passes).
            """
            loop = _get_loop()
            return await loop.run_in_executor(None, _functools.partial(cls, *args, **kwargs))


    TcpStream.__module__ = __name__
    TcpStream.__qualname__ = "TcpStream"
