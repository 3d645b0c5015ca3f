"""asyncio integration: chunk ringbuffers and heap streams."""

import asyncio
import collections

import spead2
from . import ChunkRingbuffer as _ChunkRingbuffer
from . import Stream as _Stream


class _FdWaiter:
    """Waits, FIFO among concurrent waiters, for a file descriptor to be readable."""

    def __init__(self, fd):
        self._fd = fd
        self._waiters = collections.deque()
        self._loop = None

    def _ready(self):
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if not self._waiters:
            self._loop.remove_reader(self._fd)

    async def wait(self):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self._waiters:
            self._loop = loop
            loop.add_reader(self._fd, self._ready)
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if not fut.done() or fut.cancelled():
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
                if not self._waiters and self._loop is not None:
                    self._loop.remove_reader(self._fd)


async def _until_done(attempt, busy, waiter):
    """Call `attempt` until it does not raise `busy`, waiting on `waiter` in
    between.  Yields to the loop first (a busy producer cannot starve it) and
    never awaits after `attempt` succeeded, so cancellation is all-or-nothing."""
    await asyncio.sleep(0)
    while True:
        try:
            return attempt()
        except busy:
            await waiter.wait()


class _AsyncIterGet:
    """Async iteration over ``await self.get()`` until :exc:`spead2.Stopped`."""

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.get()
        except spead2.Stopped:
            raise StopAsyncIteration from None


class ChunkRingbuffer(_AsyncIterGet, _ChunkRingbuffer):
    """A :class:`spead2.recv.ChunkRingbuffer` with coroutine ``get`` and ``put``.

    The synchronous methods are still available as ``get_nowait`` and
    ``put_nowait``; async iteration yields chunks until the ring is stopped.
    """

    def __init__(self, maxsize):
        super().__init__(maxsize)
        self._data_waiter = _FdWaiter(self.data_fd)
        self._space_waiter = _FdWaiter(self.space_fd)

    async def get(self):
        """Retrieve a chunk, waiting if necessary; raises :exc:`spead2.Stopped`."""
        return await _until_done(self.get_nowait, spead2.Empty, self._data_waiter)

    async def put(self, chunk):
        """Add a chunk, waiting for space if necessary; raises :exc:`spead2.Stopped`."""
        return await _until_done(lambda: self.put_nowait(chunk), spead2.Full, self._space_waiter)


class Stream(_AsyncIterGet, _Stream):
    """A :class:`spead2.recv.Stream` whose :meth:`get` is a coroutine.

    The synchronous form is still available as ``get_nowait``; async
    iteration yields heaps until the stream has ended.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiter = _FdWaiter(self.fd)

    async def get(self):
        """Retrieve a heap, waiting if necessary; raises :exc:`spead2.Stopped`."""
        return await _until_done(self.get_nowait, spead2.Empty, self._waiter)
