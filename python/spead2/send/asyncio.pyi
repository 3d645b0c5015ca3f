import asyncio
import socket
from collections.abc import Sequence
from typing import ClassVar, overload

import spead2
import spead2.send
from spead2.send import GroupMode, Heap, HeapReference, HeapReferenceList, Stream, StreamConfig

_HeapRefs = HeapReferenceList | Sequence[HeapReference]

class _AsyncStream(Stream):
    def async_send_heap(
        self, heap: Heap, cnt: int = -1, substream_index: int = 0, rate: float = -1.0
    ) -> asyncio.Future[int]: ...
    def async_send_heaps(self, heaps: _HeapRefs, mode: GroupMode) -> asyncio.Future[int]: ...
    async def async_flush(self) -> None: ...

class BytesStream(_AsyncStream):
    def __init__(self, thread_pool: spead2.ThreadPool, config: StreamConfig = ...) -> None: ...
    def getvalue(self) -> bytes: ...

class InprocStream(_AsyncStream):
    def __init__(
        self, thread_pool: spead2.ThreadPool, queues: Sequence[spead2.InprocQueue], config: StreamConfig = ...
    ) -> None: ...
    @property
    def queues(self) -> Sequence[spead2.InprocQueue]: ...

class UdpStream(spead2.send.UdpStream, _AsyncStream): ...

class TcpStream(spead2.send.TcpStream, _AsyncStream):
    # connect(*args, **kwargs) passes its arguments to the constructor.
    @overload
    @classmethod
    async def connect(cls, thread_pool: spead2.ThreadPool, socket: socket.socket, config: StreamConfig = ...) -> TcpStream: ...
    @overload
    @classmethod
    async def connect(
        cls,
        thread_pool: spead2.ThreadPool,
        endpoints: Sequence[tuple[str, int]],
        config: StreamConfig = ...,
        buffer_size: int = 212992,
        interface_address: str = "",
        *,
        connect_timeout: float | None = None,
    ) -> TcpStream: ...

class PcapFileStream(_AsyncStream):
    def __init__(
        self,
        thread_pool: spead2.ThreadPool,
        filename: str,
        endpoints: Sequence[tuple[str, int]],
        config: StreamConfig = ...,
        source: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None: ...
