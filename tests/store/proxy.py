"""A TCP forwarder a test starts in front of a real server, and cuts to play an outage.

It runs its own event loop in a thread, so code under test may block on a socket through it
(the state database's driver does) from any thread, the test's event loop included.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_CHUNK_BYTES = 65536


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; ``cut`` drops every connection and refuses
    new ones (at once, or after the clients have sent a given number of further chunks)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()
        self._down = False
        # client chunks still let through before the cut; None when no cut is armed
        self._armed: int | None = None
        self.port = 0
        self.connections = 0

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._server = self._run(lambda: asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(self._close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def cut(self, *, after_chunks: int = 0) -> None:
        """Drop every connection and refuse new ones, now or after ``after_chunks`` more chunks
        sent by clients (a chunk is what one socket read returns: a query, a handshake step)."""
        self._run_sync(lambda: self._arm(after_chunks))

    def restore(self) -> None:
        """Accept and forward connections again (those cut stay cut)."""

        def restore() -> None:
            self._down = False
            self._armed = None

        self._run_sync(restore)

    @property
    def is_down(self) -> bool:
        """Whether the proxy refuses connections now."""
        return self._run_sync(lambda: self._down)

    # -- inside the proxy's loop ------------------------------------------------------------

    def _arm(self, after_chunks: int) -> None:
        if after_chunks <= 0:
            self._cut_now()
        else:
            self._armed = after_chunks

    def _cut_now(self) -> None:
        self._down = True
        self._armed = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        pair = (writer.transport, up_writer.transport)
        for transport in pair:
            assert isinstance(transport, asyncio.Transport)
            self._transports.add(transport)
        await asyncio.gather(
            self._pump(reader, up_writer, count=True),
            self._pump(up_reader, writer, count=False),
        )
        for transport in pair:
            assert isinstance(transport, asyncio.Transport)
            self._transports.discard(transport)
            transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(_CHUNK_BYTES):
                if self._down:
                    break
                if count and self._armed is not None:
                    if self._armed == 0:
                        self._cut_now()
                        break
                    self._armed -= 1
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()

    async def _close(self) -> None:
        self._cut_now()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- from the test's thread -------------------------------------------------------------

    def _run(self, factory: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return await factory()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def _run_sync(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        result: T = asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)
        return result
