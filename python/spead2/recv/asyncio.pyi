from typing import AsyncIterator

import spead2.recv

class ChunkRingbuffer(spead2.recv.ChunkRingbuffer):
    def __init__(self, maxsize: int) -> None: ...
    async def get(self) -> spead2.recv.Chunk: ...  # type: ignore[override]
    async def put(self, chunk: spead2.recv.Chunk) -> None: ...  # type: ignore[override]
    def __aiter__(self) -> AsyncIterator[spead2.recv.Chunk]: ...
    async def __anext__(self) -> spead2.recv.Chunk: ...
