"""A FastAPI service that runs a batch in the background and streams its progress.

``POST /batches`` with ``{"prompts": [...]}`` starts the batch and answers at
once with its id; ``GET /batches/{id}/events`` streams the batch as
server-sent events, built on ``on_status``:

* ``status``: a task was created or its status changed (``index``, ``task_id``,
  ``status``, ``previous``);
* ``outcome``: a prompt is done (``index``, ``status``, ``image_url``, ``error``);
* ``done``: the batch is over, and the stream ends.

Every event has an ``id``, so a browser that reconnects (``EventSource`` does
by itself) picks up after the last event it saw. ``GET /`` is a page that
starts a batch and shows it. Try it against the fake provider, with no key
and no network::

    python -m banana_async.testing --port 8500 &
    BANANA_BASE_URL=http://127.0.0.1:8500 BANANA_API_KEY=sk-fake-123 python examples/fastapi_sse.py
    # open http://localhost:8000/ , or:
    curl -X POST localhost:8000/batches -H 'content-type: application/json' \\
         -d '{"prompts": ["a cat", "a dog"]}'
    curl -N localhost:8000/batches/<id>/events

Batches live in memory, in one worker process: a sketch of the mechanism,
not a job queue. When the server stops, the event streams end at once and
the batches still running are cancelled (their pollers stop; tasks already
created at the provider run on there). That takes :class:`Server`, which
``python examples/fastapi_sse.py`` runs: plain uvicorn waits for open
streams to close before it shuts the application down, so under the
``uvicorn`` command give it ``--timeout-graceful-shutdown 5``, after which it
cuts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, Field

import banana_async as ba
from banana_async.fastapi import BananaClientDep, lifespan


class Batch:
    """One batch's events so far; any number of streams follow them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.done = False
        self.streams_ended = False
        self._changed = asyncio.Condition()

    async def add(self, name: str, data: dict[str, Any], *, last: bool = False) -> None:
        async with self._changed:
            self.events.append((name, data))
            self.done = last
            self._changed.notify_all()

    async def on_status(self, event: ba.TaskEvent) -> None:
        """The ``on_status`` callback: one ``status`` event per creation or change."""
        await self.add(
            "status",
            {
                "index": event.index,
                "task_id": event.task.id,
                "status": event.task.status,
                "previous": event.previous,
            },
        )

    async def end_streams(self) -> None:
        """End every stream following the batch now (the server is shutting down)."""
        async with self._changed:
            self.streams_ended = True
            self._changed.notify_all()

    def _beyond(self, position: int) -> bool:
        return len(self.events) > position or self.done or self.streams_ended

    async def follow(self, start: int) -> AsyncIterator[tuple[int, str, dict[str, Any]]]:
        """The events from position ``start`` on, as they come, until the batch is over."""
        position = start
        while True:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._beyond, position))
                new = self.events[position:]
            for name, data in new:
                yield position, name, data
                position += 1
            if self.streams_ended or (self.done and position >= len(self.events)):
                return


class Batches:
    """The batches of the application, and the background tasks running them."""

    def __init__(self) -> None:
        self.batches: dict[str, Batch] = {}
        self._running: set[asyncio.Task[None]] = set()

    def start(self, client: ba.BananaClient, prompts: list[str]) -> str:
        batch_id = secrets.token_hex(8)
        batch = self.batches[batch_id] = Batch()
        task = asyncio.create_task(self._run(client, batch, prompts), name=f"batch-{batch_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return batch_id

    async def _run(self, client: ba.BananaClient, batch: Batch, prompts: list[str]) -> None:
        try:
            async for outcome in client.generate_many(prompts, on_status=batch.on_status):
                task = outcome.task
                await batch.add(
                    "outcome",
                    {
                        "index": outcome.index,
                        "status": "failed" if task is None else task.status,
                        "image_url": None if task is None else task.image_url,
                        "error": None if outcome.error is None else str(outcome.error),
                    },
                )
        finally:
            # Also when cancelled at shutdown: the streams end instead of hanging.
            await batch.add("done", {}, last=True)

    async def end_streams(self) -> None:
        """End the event streams of every batch (the batches themselves run on)."""
        for batch in self.batches.values():
            await batch.end_streams()

    async def close(self) -> None:
        """Cancel the batches still running and wait until they have stopped."""
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)


@asynccontextmanager
async def own_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The application's own resources; the client is open all through them."""
    app.state.batches = batches = Batches()
    try:
        yield
    finally:
        await batches.close()  # before the client closes: the batches use it


def get_batches(request: Request) -> Batches:
    batches: Batches = request.app.state.batches
    return batches


BatchesDep = Annotated[Batches, Depends(get_batches)]
router = APIRouter()


class BatchRequest(BaseModel):
    prompts: list[str] = Field(min_length=1, max_length=100)


class BatchStarted(BaseModel):
    id: str
    events: str


@router.post("/batches")
async def start_batch(
    body: BatchRequest, client: BananaClientDep, batches: BatchesDep
) -> BatchStarted:
    """Start a batch in the background and answer at once."""
    batch_id = batches.start(client, body.prompts)
    return BatchStarted(id=batch_id, events=f"/batches/{batch_id}/events")


def sse(position: int, name: str, data: dict[str, Any]) -> str:
    """One server-sent event (data on one line: JSON has no raw newlines)."""
    return f"id: {position}\nevent: {name}\ndata: {json.dumps(data)}\n\n"


@router.get("/batches/{batch_id}/events")
async def batch_events(
    batch_id: str,
    batches: BatchesDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """The batch's events so far, then each one as it comes, until the batch is over.

    A ``Last-Event-ID`` header (a reconnecting browser's) resumes after that
    event; one that is not an id this stream sent (a non-negative integer)
    is refused with 400.
    """
    batch = batches.batches.get(batch_id)
    if batch is None:
        raise HTTPException(status_code=404, detail="no such batch")
    start = 0
    if last_event_id is not None:
        # Digits only: a negative id would index the events from their end.
        if not (last_event_id.isascii() and last_event_id.isdigit()):
            raise HTTPException(
                status_code=400, detail="Last-Event-ID must be an event id: a number from 0"
            )
        start = int(last_event_id) + 1

    async def stream() -> AsyncIterator[str]:
        async for position, name, data in batch.follow(start):
            yield sse(position, name, data)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


PAGE = """<!doctype html>
<title>banana_async batch</title>
<form id="f"><textarea id="p" rows="4" cols="60">a cat on a windowsill
a lighthouse at dusk</textarea><br><button>Generate</button></form>
<ol id="out"></ol>
<script>
document.getElementById("f").onsubmit = async (e) => {
  e.preventDefault();
  const prompts = document.getElementById("p").value.split("\\n").filter((p) => p.trim());
  const started = await fetch("/batches", {method: "POST",
    headers: {"content-type": "application/json"}, body: JSON.stringify({prompts})});
  const {events} = await started.json();
  const out = document.getElementById("out");
  out.replaceChildren();
  const lines = prompts.map((p) => {
    const li = out.appendChild(document.createElement("li"));
    li.append(p + ": ");
    return li.appendChild(document.createElement("span"));
  });
  const source = new EventSource(events);
  source.addEventListener("status", (m) => {
    const d = JSON.parse(m.data); lines[d.index].textContent = d.status; });
  source.addEventListener("outcome", (m) => {
    const d = JSON.parse(m.data);
    if (d.image_url) {
      const a = document.createElement("a"); a.href = d.image_url; a.textContent = "image";
      lines[d.index].replaceChildren(a);
    } else { lines[d.index].textContent = d.error; }
  });
  source.addEventListener("done", () => source.close());
};
</script>
"""


@router.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE


def make_app(**client_options: Any) -> FastAPI:
    """The application; ``client_options`` go to the BananaClient (tests pass their own)."""
    options: dict[str, Any] = {
        "dialect": os.environ.get("BANANA_DIALECT", "nano"),
        # None (unset) means the dialect's own API hosts.
        "base_url": os.environ.get("BANANA_BASE_URL"),
        **client_options,
    }
    # The client's lifespan wraps the application's own.
    app = FastAPI(lifespan=lifespan(own_lifespan, **options))
    app.include_router(router)
    return app


class Server(uvicorn.Server):
    """uvicorn that ends the event streams as soon as it starts shutting down.

    uvicorn runs the lifespan's shutdown (which cancels the batches) only
    once every connection is closed, and a stream stays open until its batch
    is over: without this, Ctrl-C would wait for every followed batch to end.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        if isinstance(app, FastAPI) and hasattr(app.state, "batches"):
            await app.state.batches.end_streams()
        await super().shutdown(sockets)


app = make_app()


if __name__ == "__main__":
    # uvicorn raises the Ctrl-C it handled again once it has stopped;
    # uvicorn.run() takes it quietly, and so does this.
    with contextlib.suppress(KeyboardInterrupt):
        Server(uvicorn.Config(app, port=int(os.environ.get("PORT", "8000")))).run()
