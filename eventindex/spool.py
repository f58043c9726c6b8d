"""A first-in first-out byte buffer that keeps a bounded amount in memory and
spills the rest to a temporary file.

The streaming lookup reads the request body into one of these while it writes
the response. A client that sends its whole body before it reads anything (as
httpx and most HTTP/1.1 clients do) would otherwise deadlock against a server
that stops reading while its writes are blocked; with the spool the server
keeps reading, in bounded memory, whatever the client does.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import deque
from typing import IO

_READ_SIZE = 1024 * 1024


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"request body exceeds {limit} bytes")


class Spool:
    def __init__(self, memory_limit: int, total_limit: int) -> None:
        self._memory: deque[bytes] = deque()
        self._memory_size = 0
        self._memory_limit = memory_limit
        self._total_limit = total_limit
        self._file: IO[bytes] | None = None
        self._file_write = 0
        self._file_read = 0
        self._spilling = False
        self._closed = False
        self._error: BaseException | None = None
        self._received = 0
        self._ready = asyncio.Event()

    @property
    def received(self) -> int:
        return self._received

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._received += len(data)
        if self._received > self._total_limit:
            self.fail(BodyTooLarge(self._total_limit))
            return
        # Once anything is on disk, everything after it goes there too, until
        # the reader has caught up, so that the order is kept.
        if not self._spilling and self._memory_size + len(data) <= self._memory_limit:
            self._memory.append(data)
            self._memory_size += len(data)
        else:
            if self._file is None:
                # Closed by close(): the spool, a context manager, owns it.
                self._file = tempfile.TemporaryFile(prefix="eventindex-spool-")  # noqa: SIM115
            self._spilling = True
            self._file.seek(self._file_write)
            self._file.write(data)
            self._file_write += len(data)
        self._ready.set()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def finish(self) -> None:
        """The writer is done: the reader gets what is left, then EOF."""
        self._closed = True
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        """The writer failed: the reader gets this error instead of more data."""
        self._error = error
        self._closed = True
        self._ready.set()

    def has_data(self) -> bool:
        """Whether ``read`` would return at once."""
        return bool(
            self._memory
            or (self._file is not None and self._file_read < self._file_write)
            or self._closed
        )

    async def read(self) -> bytes:
        """The next piece of data in order, or b"" at the end."""
        while True:
            if self._error is not None:
                raise self._error
            if self._memory:
                data = self._memory.popleft()
                self._memory_size -= len(data)
                return data
            if self._file is not None and self._file_read < self._file_write:
                self._file.seek(self._file_read)
                data = self._file.read(min(_READ_SIZE, self._file_write - self._file_read))
                self._file_read += len(data)
                if self._file_read == self._file_write:
                    # Caught up with the disk: back to memory, reuse the file from the start.
                    self._file_read = self._file_write = 0
                    self._file.truncate(0)
                    self._spilling = False
                return data
            if self._closed:
                return b""
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """Drop what is buffered and the temporary file (the owner's ``with`` does it)."""
        self._memory.clear()
        self._memory_size = 0
        if self._file is not None:
            self._file.close()
            self._file = None
