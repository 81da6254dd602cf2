"""Errors say what they mean: a create that may have been billed says so; reprs fit a line."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import banana_async as ba
from banana_async.testing import FakeBananaServer, Fault
from tests.conftest import API_KEY

BILLED = "the provider may have created (and billed) the task anyway"


@pytest.fixture
async def live() -> AsyncIterator[FakeBananaServer]:
    async with FakeBananaServer(api_key=API_KEY, duration=0.01) as server:
        yield server


def client_for(server: FakeBananaServer, *, timeout: float = 5.0) -> ba.BananaClient:
    return ba.BananaClient(API_KEY, base_url=server.url, max_retries=0, timeout=timeout)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.status(500, process=True), ba.ServerError),
        (Fault.status(503), ba.ServerError),
        (Fault.reset(process=True), ba.APIConnectionError),
        (Fault.stall(5.0, process=True), ba.APITimeoutError),
    ],
    ids=["500-processed", "503", "reset", "timeout"],
)
async def test_a_create_that_failed_after_sending_says_it_may_be_billed(
    live: FakeBananaServer, fault: Fault, kind: type[ba.BananaError]
) -> None:
    live.inject(fault, on="create")
    async with client_for(live, timeout=0.5) as client:
        with pytest.raises(kind) as caught:
            await client.create("a cat")
    message = str(caught.value)
    assert BILLED in message
    assert "not sent again" in message
    assert live.count("create") == 1  # and indeed it was not
    if isinstance(caught.value, ba.APIStatusError):
        assert str(caught.value.status_code) in message


async def test_a_create_that_never_connected_says_nothing_of_billing() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    # Nothing listens on that port now: refused, so certainly never sent.
    async with ba.BananaClient(
        API_KEY, base_url=f"http://127.0.0.1:{port}", max_retries=0
    ) as client:
        with pytest.raises(ba.APIConnectionError) as caught:
            await client.create("a cat")
    assert caught.value.request_sent is False
    assert "billed" not in str(caught.value)


async def test_a_refused_create_says_nothing_of_billing(live: FakeBananaServer) -> None:
    live.inject(Fault.status(400), on="create")
    async with client_for(live) as client:
        with pytest.raises(ba.BadRequestError) as caught:
            await client.create("a cat")
    assert "billed" not in str(caught.value)
    assert "HTTP 400" in str(caught.value)


async def test_a_polled_error_says_nothing_of_billing(live: FakeBananaServer) -> None:
    async with client_for(live) as client:
        task = await client.create("a cat")
        live.inject(Fault.status(502), on="query")
        with pytest.raises(ba.ServerError) as caught:
            await client.get(task.id)
    assert "billed" not in str(caught.value)
    assert "HTTP 502" in str(caught.value)


async def test_an_unreadable_answer_names_its_status(live: FakeBananaServer) -> None:
    live.inject(
        Fault.body(b"<html><title>gateway</title></html>", content_type="text/html"), on="query"
    )
    async with client_for(live) as client:
        task = await client.create("a cat")
        with pytest.raises(ba.ResponseValidationError) as caught:
            await client.get(task.id)
    assert "(HTTP 200)" in str(caught.value)


def test_reprs_fit_on_one_line(tmp_path: Path) -> None:
    prompt = "a very long prompt\nthat goes on, " * 40
    task = ba.Task(
        id="task-1",
        status=ba.TaskStatus.FAILED,
        raw_status="FAILED",
        model="nano-banana-2",
        image_url="https://images.example/" + "x" * 300,
        error="content policy violation\n" * 20,
    )
    failed = ba.Outcome(
        3, ba.GenerationRequest(prompt), task, error=ba.TaskFailedError(task), path=tmp_path / "x"
    )
    for shown in (repr(task), repr(failed), repr(ba.Outcome(0, None))):
        assert "\n" not in shown
        assert len(shown) - len(str(tmp_path)) < 250  # the path is shown whole
    assert repr(task).startswith("Task(id='task-1', status='failed (FAILED)', ")
    assert repr(failed).startswith("Outcome(index=3, ok=False, prompt='a very long prompt\\nthat")
    assert "task_id='task-1', status='failed'" in repr(failed)
    assert "error=TaskFailedError('task task-1 failed: content policy" in repr(failed)
