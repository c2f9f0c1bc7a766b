"""Revocations that reach every process at once: PostgreSQL LISTEN/NOTIFY on the state database.

A revocation sends ``NOTIFY personify_revocations`` in the same transaction as the update of
the revoked row (``announce``): PostgreSQL delivers the notice at commit, exactly when the
revocation becomes true, to every session listening on the channel of that database, and
drops it when the transaction rolls back. Every server process listens (``RevocationListener``)
and clears its cached key lookups when a notice arrives, so a revoked write key or API key
is refused everywhere well within a second. The notice names no key: revocations are rare,
and a cleared cache costs one query per key in use.

The state database is the channel because every revocation already writes to it, from the
API or from the ``personify`` command line, and every process already reaches it: nothing
else needs configuring. Where the state database is SQLite there is no channel, and other
processes see a revocation once their cached lookup expires (``PERSONIFY_AUTH_CACHE_TTL_S``).
That TTL stays the fallback on PostgreSQL too, for the moments the listening connection is
down; a listener clears the caches on every (re)connection, since notices sent while it was
away are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import sqlalchemy as sa

from personify.store.database import Database

logger = logging.getLogger("personify.auth")

CHANNEL = "personify_revocations"
_RECONNECT_S = 1.0


def announce(conn: sa.Connection) -> None:
    """Tell every listening process, at the commit of ``conn``'s transaction, that a key was
    revoked (nothing to do on SQLite, which has no channel)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_notify(CHANNEL, "")))


class RevocationListener:
    """Listens for revocations on the state database and runs its subscribers' callbacks.

    ``start`` and ``close`` run in the server's event loop; on SQLite both do nothing. The
    callbacks run in the event loop thread and must be quick (they clear a cache).
    """

    def __init__(self, db: Database, *, reconnect_s: float = _RECONNECT_S) -> None:
        self._db = db
        self._reconnect_s = reconnect_s
        self._callbacks: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        # whether the channel is up, and how many notices came over it
        self.is_listening = False
        self.notices = 0

    @property
    def has_channel(self) -> bool:
        """Whether the state database can carry revocation notices (PostgreSQL)."""
        return self._db.dialect == "postgresql"

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on every revocation notice, and on every (re)connection."""
        self._callbacks.append(callback)

    async def start(self) -> None:
        """Start listening in the background (PostgreSQL only)."""
        if self.has_channel and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="revocation-listener")

    async def close(self) -> None:
        """Stop listening and close the listening connection."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.is_listening = False

    def _revoked(self) -> None:
        for callback in self._callbacks:
            callback()

    async def _listen(self) -> None:
        import psycopg

        # the engine's own URL (with its options, such as a search_path), for plain psycopg
        conninfo = self._db.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                async with connection as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    # whatever was revoked while nobody listened is unknown: forget it all
                    self._revoked()
                    self.is_listening = True
                    async for _notice in conn.notifies():
                        self.notices += 1
                        self._revoked()
            except psycopg.Error as exc:
                logger.warning(
                    "the revocation channel is down (%s); retrying in %.1f s, and until then "
                    "revocations by other processes take up to PERSONIFY_AUTH_CACHE_TTL_S here",
                    exc,
                    self._reconnect_s,
                )
            self.is_listening = False
            await asyncio.sleep(self._reconnect_s)
