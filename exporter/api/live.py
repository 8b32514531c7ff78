"""WS /ws/metrics: each newly stored call, pushed as the ingest transaction commits.

The writer announces each batch of new calls with NOTIFY in its write transaction (where the
rows are, not the rows); one LISTEN connection per API process reads those rows through the time
index and fans them out to the connected clients. This works whether the API runs in the
exporter's process (`serve`) or alone (`api`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, WebSocket, WebSocketDisconnect
from psycopg.rows import dict_row

from exporter.api.deps import get_scope
from exporter.core.security import LIVE_SUBPROTOCOL
from exporter.ingest.storage import NOTIFY_CHANNEL
from exporter.usage.totals import CALL_COLUMNS, Scope

log = logging.getLogger(__name__)
router = APIRouter(tags=["live"])
QUEUE_MAX = 10_000  # calls waiting for one slow client before it is disconnected
# The close code for a client dropped for not reading: 1008, policy violation (RFC 6455 7.4.1),
# since keeping up with the feed is the one thing a client must do.
DROPPED_CODE = 1008
_MAX_REASON_CHARS = 120  # a close frame's reason is at most 123 bytes (RFC 6455 5.5)
RECONNECT_SECONDS = 2.0
READY_TIMEOUT_SECONDS = 5.0


class Subscriber:
    """One client's backlog, bounded in calls and in bytes. Each call is encoded once for all
    clients: a backlog holds references to the shared text, and its bytes are counted against
    this client's bound, so a client that does not read is dropped, not buffered without end."""

    def __init__(self, scope: Scope, max_bytes: int) -> None:
        self.scope = scope
        self.max_bytes = max_bytes
        self.backlog: collections.deque[str] = collections.deque()
        self.backlog_bytes = 0
        self.ready = asyncio.Event()
        self.dropped: str | None = None

    def offer(self, text: str) -> None:
        if self.dropped:
            return
        if len(self.backlog) >= QUEUE_MAX or self.backlog_bytes + len(text) > self.max_bytes:
            self.dropped = f"not reading: {self.backlog_bytes} bytes of calls waiting"
            self.backlog.clear()
            self.backlog_bytes = 0
        else:
            self.backlog.append(text)
            self.backlog_bytes += len(text)
        self.ready.set()

    def take(self) -> str:
        text = self.backlog.popleft()
        self.backlog_bytes -= len(text)
        return text


class Broadcaster:
    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="nexus-live-feed")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self, scope: Scope, max_bytes: int) -> Subscriber:
        subscriber = Subscriber(scope, max_bytes)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    async def _listen(self) -> None:
        while True:
            try:
                async with (
                    await psycopg.AsyncConnection.connect(
                        self._url, autocommit=True, connect_timeout=5
                    ) as conn,
                    await psycopg.AsyncConnection.connect(
                        self._url, autocommit=True, connect_timeout=5
                    ) as reader,
                ):
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening.set()
                    async for note in conn.notifies():
                        if self._subscribers:  # nobody watching: nothing to read
                            self._publish(await _stored_calls(reader, json.loads(note.payload)))
            except (psycopg.Error, OSError, ValueError) as exc:
                self.listening.clear()
                log.warning("live feed lost its database connection: %s", exc)
                await asyncio.sleep(RECONNECT_SECONDS)

    def _publish(self, calls: list[dict[str, Any]]) -> None:
        # Encoded as Starlette's send_json would, once for every client.
        messages = [
            (
                call,
                json.dumps(
                    {"type": "call", "call": call}, separators=(",", ":"), ensure_ascii=False
                ),
            )
            for call in calls
        ]
        for subscriber in list(self._subscribers):
            for call, text in messages:
                if _matches(call, subscriber.scope):
                    subscriber.offer(text)
            if subscriber.dropped:
                self._subscribers.discard(subscriber)


async def _stored_calls(
    reader: psycopg.AsyncConnection[Any], batch: dict[str, Any]
) -> list[dict[str, Any]]:
    """The rows one write transaction stored, found by their time span and ingested_at."""
    async with reader.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            f'SELECT {CALL_COLUMNS} FROM api_calls WHERE "timestamp" BETWEEN %s AND %s'
            ' AND ingested_at = %s ORDER BY "timestamp" LIMIT %s',
            (
                batch["first"],
                batch["last"],
                batch["ingested_at"],
                min(int(batch["rows"]), QUEUE_MAX),
            ),
        )
        rows = await cursor.fetchall()
    return [{**row, "timestamp": row["timestamp"].isoformat()} for row in rows]


def _matches(call: dict[str, Any], scope: Scope) -> bool:
    return all(value is None or call.get(key) == value for key, value in scope.__dict__.items())


@router.websocket("/ws/metrics")
async def live_calls(websocket: WebSocket, scope: Annotated[Scope, Depends(get_scope)]) -> None:
    """Sends `{"type": "call", "call": {...}}` for each new call (filters: service_name,
    provider, model, operation)."""
    broadcaster: Broadcaster = websocket.app.state.broadcaster
    subscriber = broadcaster.subscribe(scope, websocket.app.state.settings.ws_queue_max_bytes)
    # A browser that offered subprotocols (the page, for its token) fails the connection
    # unless the server selects one: it selects the live feed's, never the token's.
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=LIVE_SUBPROTOCOL if LIVE_SUBPROTOCOL in offered else None)
    # Say "ready" only once the feed listens, so a client knows what it will not miss.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(broadcaster.listening.wait(), READY_TIMEOUT_SECONDS)
    await websocket.send_json({"type": "hello", "listening": broadcaster.listening.is_set()})
    sender = asyncio.create_task(_send_calls(websocket, subscriber))
    receiver = asyncio.create_task(_until_closed(websocket))
    try:
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        broadcaster.unsubscribe(subscriber)
        for task in (sender, receiver):
            task.cancel()
        with contextlib.suppress(Exception):
            await websocket.close()


async def _send_calls(websocket: WebSocket, subscriber: Subscriber) -> None:
    while True:
        await subscriber.ready.wait()
        subscriber.ready.clear()
        if subscriber.dropped:
            log.info("dropped a live-feed client: %s", subscriber.dropped)
            # A client that reads nothing never reads the close frame either: the server's
            # send timeout then cuts the connection, and this returns.
            await websocket.close(DROPPED_CODE, subscriber.dropped[:_MAX_REASON_CHARS])
            return
        while subscriber.backlog:
            await websocket.send_text(subscriber.take())


async def _until_closed(websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
