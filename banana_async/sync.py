"""``SyncBananaClient``: the blocking face of :class:`~banana_async.BananaClient`.

For code that does not run an event loop of its own: scripts, threads,
Django or Flask views, notebooks. There is no second copy of the client here.
A :class:`SyncBananaClient` owns one :class:`~banana_async.BananaClient`,
one private event loop and one daemon thread running that loop; every
method sends its coroutine to that loop and blocks until it is done::

    with SyncBananaClient(dialect="nano") as client:
        task = client.generate("a cat on a windowsill")
        path = client.download(task, "out/")

Because the calling thread only waits, it does not matter what it runs: a
plain script, any number of threads sharing one client, or a thread whose own
event loop is running (a notebook cell, a sync function called from async
code), which the blocking call holds up just as any blocking call would.

The methods are made from :class:`~banana_async.BananaClient`'s own, and
take their parameters from them (:func:`_blocking`): an option added to the
async client is an option of this one too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import itertools
import signal
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, Self, TypeVar

from banana_async.client import BananaClient
from banana_async.errors import InvalidRequestError

if TYPE_CHECKING:
    from banana_async.dialects import Dialect
    from banana_async.models import Outcome

__all__ = ["OutcomeIterator", "SyncBananaClient"]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_S = TypeVar("_S")

_CLOSED = "this SyncBananaClient is closed; create a new one"
_CLOSED_WHILE_RUNNING = "the SyncBananaClient was closed while this call was running"
_NUMBERS = itertools.count(1)


class _Call(Generic[_T]):
    """One coroutine run on the loop thread, as the calling thread sees it.

    The result goes into :attr:`future` only when the coroutine's task is
    done, cleanup included: a caller that waits for it after a cancel knows
    that the work has stopped.
    """

    __slots__ = ("error", "factory", "future", "reason", "task")

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, _T]]) -> None:
        self.factory = factory
        self.future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self.task: asyncio.Task[_T] | None = None
        self.reason = "the call was cancelled"
        self.error: BaseException | None = None

    def cancel(self, reason: str, error: BaseException | None = None) -> None:
        """Cancel the task (on the loop thread).

        The caller, if it still waits, gets ``error`` if given, else a
        :class:`RuntimeError` saying ``reason``.
        """
        self.reason = reason
        self.error = error
        if self.task is not None:
            self.task.cancel()


class _LoopThread:
    """An event loop running in a daemon thread, and the calls sent to it.

    ``cleanup`` is awaited once when the loop shuts down, whatever stops it:
    :meth:`stop`, or a callback on the loop raising :class:`SystemExit` or
    :class:`KeyboardInterrupt`, which asyncio lets out of the loop.
    """

    def __init__(self, name: str, cleanup: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._cleanup = cleanup
        # Only the loop thread touches the set: calls still running.
        self._calls: set[_Call[Any]] = set()
        # Closing and submitting take turns, so no call slips in after the
        # shutdown has collected the calls to cancel.
        self._lock = threading.Lock()
        self._stopped = False
        # Done when _shutdown has run to its end; the loop runs until then.
        self._shut_down: asyncio.Future[None] = self.loop.create_future()
        # The shutdown task, when the loop started it itself (see _serve).
        self._aborting: asyncio.Task[None] | None = None
        # What escaped the loop and stopped it, if anything did: the calls
        # the shutdown cancels raise it.
        self._escaped: BaseException | None = None
        self.thread.start()

    @property
    def stopped(self) -> bool:
        """Whether the loop was told to stop, or stopped by itself: no call is taken any more."""
        return self._stopped

    def _serve(self) -> None:
        loop = self.loop
        try:
            _run_through(loop, self._shut_down, self._abort)
        finally:
            # What asyncio.run does after its main coroutine: no task and no
            # async generator may outlive the loop.
            try:
                _cancel_leftovers(loop)
                _run_through(loop, loop.shutdown_asyncgens())
                _run_through(loop, loop.shutdown_default_executor())
            finally:
                loop.close()

    def _abort(self, error: BaseException) -> None:
        """Shut down after ``error`` (SystemExit, KeyboardInterrupt) escaped the loop.

        asyncio lets those two out of ``run_until_complete`` after storing them
        in the task that raised them, so the call of that task still hears of
        them (its done callback runs once the loop runs again). The loop would
        otherwise be left stopped with its sessions open and every later call
        waiting forever: shut down as :meth:`stop` does, on the loop thread.
        The other calls still running raise ``error`` too, as the caller of
        :func:`asyncio.run` would: a batch's own caller among them (the
        callback ran in one of its worker tasks, which no caller waits on).
        """
        with self._lock:
            if self._stopped:
                return  # already shutting down; running the loop again goes on with it
            self._stopped = True
            self._escaped = error
            self._aborting = self.loop.create_task(self._shutdown())

    @property
    def on_loop_thread(self) -> bool:
        """Whether the current thread is the loop's own."""
        return threading.current_thread() is self.thread

    def submit(self, factory: Callable[[], Coroutine[Any, Any, _T]]) -> _Call[_T]:
        """Start ``factory()`` as a task on the loop; return at once.

        Raises:
            RuntimeError: the loop thread was stopped (the client is closed).
        """
        call = _Call(factory)
        with self._lock:
            if self._stopped:
                raise RuntimeError(_CLOSED)
            self.loop.call_soon_threadsafe(self._start, call)
        return call

    def _start(self, call: _Call[Any]) -> None:
        # The coroutine is made here, on the loop thread: one that never gets
        # this far was never created, so it cannot warn that it was never awaited.
        try:
            call.task = self.loop.create_task(call.factory())
        except Exception as exc:
            call.future.set_exception(exc)
            return
        self._calls.add(call)
        call.task.add_done_callback(lambda task: self._finish(call, task))

    def _finish(self, call: _Call[_T], task: asyncio.Task[_T]) -> None:
        self._calls.discard(call)
        if task.cancelled():
            call.future.set_exception(call.error or RuntimeError(call.reason))
            return
        exc = task.exception()
        if exc is None:
            call.future.set_result(task.result())
        else:
            call.future.set_exception(exc)

    def wait(self, call: _Call[_T]) -> _T:
        """Block until ``call`` is done and return its result or raise its error.

        An exception that interrupts the wait (KeyboardInterrupt from Ctrl-C,
        or whatever a signal handler raises) cancels the call's task on the
        loop thread, waits until its cleanup is over, and propagates.
        """
        self._refuse_own_thread()
        with _plain_ctrl_c():
            try:
                return call.future.result()
            except BaseException:
                if not call.future.done():
                    self.loop.call_soon_threadsafe(call.cancel, "interrupted")
                    # A second Ctrl-C here stops waiting; the cleanup goes on
                    # without a witness.
                    concurrent.futures.wait([call.future])
                raise

    def run(self, factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run ``factory()`` on the loop and block until it is done (see :meth:`wait`)."""
        self._refuse_own_thread()  # before anything is sent
        return self.wait(self.submit(factory))

    def _refuse_own_thread(self) -> None:
        if self.on_loop_thread:
            raise RuntimeError(
                "a SyncBananaClient cannot be used from its own event loop thread "
                "(for example from an on_status callback): the call would wait for itself"
            )

    def stop(self) -> None:
        """Cancel every running call, await the cleanup, then stop and close the loop.

        Waits for all of it, except on the loop thread itself, where waiting
        would never end: there it only starts the shutdown. A later call
        only waits for the thread to end.
        """
        with self._lock:
            started = self._stopped
            self._stopped = True
            if not started:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        if self.on_loop_thread or sys.is_finalizing():
            return
        self.thread.join()

    async def _shutdown(self) -> None:
        try:
            calls = list(self._calls)
            for call in calls:
                call.cancel(_CLOSED_WHILE_RUNNING, self._escaped)
            tasks = [call.task for call in calls if call.task is not None]
            if tasks:
                await asyncio.wait(tasks)
            await self._cleanup()
        finally:
            self._shut_down.set_result(None)


def _run_through(
    loop: asyncio.AbstractEventLoop,
    awaitable: Awaitable[object],
    on_escape: Callable[[BaseException], None] | None = None,
) -> None:
    """Run ``loop`` until ``awaitable`` is done, even if exceptions escape the loop meanwhile.

    Only SystemExit and KeyboardInterrupt raised by code on the loop escape
    it (signals raise in the main thread, never here); the task that raised
    one keeps it as its result, so the caller waiting for that task hears of
    it. ``on_escape`` is told of each.
    """
    future = asyncio.ensure_future(awaitable, loop=loop)
    while not future.done():
        try:
            loop.run_until_complete(future)
        except BaseException as error:
            if future.done():
                break  # its own error, not one that escaped the loop
            if on_escape is not None:
                on_escape(error)
    future.result()


@contextlib.contextmanager
def _plain_ctrl_c() -> Iterator[None]:
    """While a call blocks :func:`asyncio.run`'s loop, make Ctrl-C raise KeyboardInterrupt.

    :func:`asyncio.run` answers the first Ctrl-C by cancelling its main
    task, which cannot take effect while that task's thread blocks here: the
    call would run to its end, and only a second Ctrl-C would interrupt it.
    For the length of the call, Python's own handler takes SIGINT instead,
    as in a script without a loop; asyncio's is put back afterwards. Any
    other handler (a web server's, or one of the program's own) is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers run in the main thread only
        return
    handler = signal.getsignal(signal.SIGINT)
    owner = getattr(getattr(handler, "func", None), "__self__", None)
    if not isinstance(owner, asyncio.Runner):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks still on ``loop`` and wait for them, as :func:`asyncio.run` does."""
    leftovers = asyncio.all_tasks(loop)
    if not leftovers:
        return
    for task in leftovers:
        task.cancel()
    _run_through(loop, asyncio.gather(*leftovers, return_exceptions=True))
    for task in leftovers:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "a task of a closed SyncBananaClient failed",
                    "exception": task.exception(),
                    "task": task,
                }
            )


def _blocking(
    method: Callable[Concatenate[BananaClient, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[SyncBananaClient, _P], _T]:
    """The blocking twin of a :class:`~banana_async.BananaClient` coroutine method.

    It takes exactly the method's parameters (type checkers and IDEs see
    them through the ParamSpec, ``inspect.signature`` and Sphinx through
    ``__signature__``) and has its docstring.
    """

    def call(self: SyncBananaClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._run(lambda client: method(client, *args, **kwargs))

    _describe(call, method, f"Blocking :meth:`BananaClient.{method.__name__}`.")
    return call


def _batching(
    method: Callable[Concatenate[BananaClient, _P], AsyncGenerator[Outcome, None]],
) -> Callable[
    [Callable[..., OutcomeIterator]], Callable[Concatenate[SyncBananaClient, _P], OutcomeIterator]
]:
    """Give the decorated method the parameters of the async ``generate_many``."""

    def decorate(
        function: Callable[..., OutcomeIterator],
    ) -> Callable[Concatenate[SyncBananaClient, _P], OutcomeIterator]:
        signature = inspect.signature(method).replace(return_annotation="OutcomeIterator")
        function.__signature__ = signature  # type: ignore[attr-defined]
        function.__annotations__ = {**method.__annotations__, "return": "OutcomeIterator"}
        return function

    return decorate


def _describe(function: Callable[..., Any], method: Callable[..., Any], summary: str) -> None:
    """Name ``function`` after ``method``, with its signature and ``summary`` over its docs."""
    function.__name__ = method.__name__
    function.__qualname__ = f"SyncBananaClient.{method.__name__}"
    function.__module__ = __name__
    function.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    # Sphinx reads the annotations apart from the signature.
    function.__annotations__ = dict(method.__annotations__)
    function.__doc__ = f"{summary}\n\n{inspect.cleandoc(method.__doc__ or '')}"


def _same_options(
    source: Callable[_P, object],
) -> Callable[[Callable[Concatenate[_S, ...], None]], Callable[Concatenate[_S, _P], None]]:
    """Give ``__init__`` the parameters of ``source``, the async client.

    Typed through the ParamSpec for type checkers and IDEs, and shown by
    ``inspect.signature`` and Sphinx through ``__signature__``, so the options
    are listed once, on :class:`~banana_async.BananaClient`.
    """

    def decorate(init: Callable[Concatenate[_S, ...], None]) -> Callable[Concatenate[_S, _P], None]:
        options = list(inspect.signature(source).parameters.values())
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        init.__signature__ = inspect.Signature([self_param, *options])  # type: ignore[attr-defined]
        init.__annotations__ = {p.name: p.annotation for p in options} | {"return": None}
        return init

    return decorate


class SyncBananaClient:
    """A blocking client: :class:`~banana_async.BananaClient` for code without an event loop.

    It takes the same arguments as :class:`~banana_async.BananaClient`
    (``session`` aside: the client opens its own, on its own loop) and has the
    same methods, which block and return what the async ones return, raising
    the same exceptions. It is open once made; use it as a context manager or
    call :meth:`close`::

        with SyncBananaClient(dialect="nano") as client:
            task = client.generate("a cat", size="16:9")
            for outcome in client.generate_many(["a dog", "a fox"]):
                print(outcome.index, outcome.ok)

    One client can serve any number of threads at once; their calls run
    concurrently on the client's event loop, in one daemon thread, sharing
    its connections, rate limit and poll timing. Make one per process (for
    example at module level in a Django or Flask app) rather than one per
    request.

    Ctrl-C while a method blocks cancels that call's work on the loop (a batch
    cancels every poller) and raises :class:`KeyboardInterrupt` in the
    caller, once the work has stopped. :meth:`close`, leaving the ``with``
    block, dropping the last reference to the client and the end of the
    interpreter all close the HTTP sessions and stop the loop; calls still
    running then raise :class:`RuntimeError`, and so does any later call.

    Inside :func:`asyncio.run` (a sync function called from async code), the
    first Ctrl-C does the same: for the length of a call, SIGINT raises
    :class:`KeyboardInterrupt` rather than go to asyncio's handler, which
    could only cancel the blocked main task once the call was over.

    Callbacks the client runs (``on_status``) run on the client's loop
    thread; they must not call the client back. One that raises
    :class:`SystemExit` or :class:`KeyboardInterrupt` stops the loop, as it
    would stop :func:`asyncio.run`: the client closes itself, the calls
    running then (that one among them) raise that exception, and later calls
    raise :class:`RuntimeError`.
    """

    @_same_options(BananaClient)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("session") is not None:
            raise InvalidRequestError(
                "SyncBananaClient takes no session=: an aiohttp session belongs to one event "
                "loop, and the client runs on a private loop of its own, where it opens its own"
            )
        # Made here, in the caller's thread, so that a bad argument raises
        # before any thread starts.
        client = BananaClient(*args, **kwargs)
        loop_thread = _LoopThread(f"banana-async-sync-{next(_NUMBERS)}", client.aclose)
        try:
            loop_thread.run(client.__aenter__)
        except BaseException:
            loop_thread.stop()
            raise
        self._client = client
        self._loop_thread = loop_thread
        # Runs at close(), when the client is collected, or at interpreter
        # exit (while the daemon thread still runs), whichever comes first;
        # it holds no reference to self, or the client would never be collected.
        self._finalizer = weakref.finalize(self, loop_thread.stop)

    def _run(self, coroutine: Callable[[BananaClient], Coroutine[Any, Any, _T]]) -> _T:
        if not self._finalizer.alive:
            raise RuntimeError(_CLOSED)
        client = self._client
        return self._loop_thread.run(lambda: coroutine(client))

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Stop every running call, close the HTTP sessions and stop the loop thread.

        Calls still running in other threads raise :class:`RuntimeError`.
        Closing twice is harmless.
        """
        self._finalizer()

    def __enter__(self) -> Self:
        if not self._finalizer.alive:
            raise RuntimeError(_CLOSED)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once the client was closed (it cannot be opened again)."""
        # The loop also stops by itself when a callback raises SystemExit or
        # KeyboardInterrupt on it (see _LoopThread._abort).
        return not self._finalizer.alive or self._loop_thread.stopped

    @property
    def dialect(self) -> Dialect:
        """The dialect this client speaks."""
        return self._client.dialect

    @property
    def create_base_url(self) -> str:
        """The base URL creates are sent to (the dialect's path is appended)."""
        return self._client.create_base_url

    @property
    def query_base_url(self) -> str:
        """The base URL status queries are sent to (the dialect's path is appended)."""
        return self._client.query_base_url

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<SyncBananaClient dialect={self.dialect.name!r} create={self.create_base_url!r} "
            f"query={self.query_base_url!r} {state}>"
        )

    # -- the API -------------------------------------------------------------------

    create = _blocking(BananaClient.create)
    get = _blocking(BananaClient.get)
    wait = _blocking(BananaClient.wait)
    generate = _blocking(BananaClient.generate)
    download = _blocking(BananaClient.download)

    @_batching(BananaClient.generate_many)
    def generate_many(self, *args: Any, **kwargs: Any) -> OutcomeIterator:
        """Generate an image for each input; an iterator of one :class:`~banana_async.Outcome` each.

        The arguments are :meth:`BananaClient.generate_many`'s, and so is
        everything about the batch: outcomes in completion order, one bad
        input never stops the others, a journal resumes it. Bad arguments
        raise here, at once. Inputs given as a plain iterable are read lazily
        on the client's loop thread, which every thread using the client
        shares: an iterable that is slow to read stalls all their calls.

        Leaving the loop early cancels every task's poller. That happens on
        the spot when the iterator goes away (as a ``for`` loop's own does),
        or use it as a context manager or call its ``close()``::

            with client.generate_many(prompts, concurrency=20) as outcomes:
                for outcome in outcomes:
                    if not outcome.ok:
                        break

        Raises:
            InvalidRequestError: bad arguments (at once).
            JournalError: a journal that cannot be used (see the async method).
        """

        async def start(client: BananaClient) -> AsyncGenerator[Outcome, None]:
            return client.generate_many(*args, **kwargs)

        return OutcomeIterator._open(self._loop_thread, self._run(start))


class _BatchState:
    """What an :class:`OutcomeIterator` shares with its finalizer."""

    __slots__ = ("batch", "done", "guard", "step")

    def __init__(self, batch: AsyncGenerator[Outcome, None]) -> None:
        self.batch = batch
        self.done = False
        self.step: _Call[Outcome | None] | None = None
        # Held only to change the fields, never while waiting.
        self.guard = threading.Lock()


class OutcomeIterator(Iterator["Outcome"]):
    """The outcomes of :meth:`~banana_async.SyncBananaClient.generate_many`, one per input.

    Each ``next()`` blocks until the next task is done. Several threads may
    take outcomes from one iterator; each outcome goes to one of them.
    Closing it, directly, by leaving its ``with`` block or by dropping it,
    cancels every poller of the batch on the loop thread and closes the
    async generator; a thread still waiting in ``next()`` then gets
    :class:`StopIteration`.

    Only :meth:`~banana_async.SyncBananaClient.generate_many` makes one.
    """

    _loop_thread: _LoopThread
    _state: _BatchState
    _turn: threading.Lock
    _finalizer: weakref.finalize[[_LoopThread, _BatchState], OutcomeIterator]

    @classmethod
    def _open(cls, loop_thread: _LoopThread, batch: AsyncGenerator[Outcome, None]) -> Self:
        # Not __init__: the parameters are private, and the docs show none.
        self = cls.__new__(cls)
        self._loop_thread = loop_thread
        self._state = _BatchState(batch)
        # One next() at a time: an async generator takes one step at a time.
        self._turn = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_batch, loop_thread, self._state)
        return self

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Outcome:
        state = self._state
        with self._turn:
            with state.guard:
                if state.done:
                    raise StopIteration
                batch = state.batch

                async def step() -> Outcome | None:
                    try:
                        return await anext(batch)
                    except StopAsyncIteration:
                        return None

                try:
                    call = state.step = self._loop_thread.submit(step)
                except RuntimeError:
                    state.done = True
                    raise
            try:
                outcome = self._loop_thread.wait(call)
            except RuntimeError:
                if call.reason == _CLOSED_BY_ITERATOR:
                    raise StopIteration from None
                self.close()
                raise
            except BaseException:
                self.close()
                raise
            finally:
                state.step = None
        if outcome is None:
            state.done = True
            self._finalizer.detach()
            raise StopIteration
        return outcome

    def close(self) -> None:
        """Stop the batch: cancel every poller and close the async generator (waits for both)."""
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_CLOSED_BY_ITERATOR = "the outcome iterator was closed"


def _close_batch(loop_thread: _LoopThread, state: _BatchState) -> None:
    """Cancel a batch's step in flight, if any, and close its async generator."""
    with state.guard:
        state.done = True
        running = state.step
        batch = state.batch

    async def shut_down() -> None:
        if running is not None and running.task is not None and not running.task.done():
            running.cancel(_CLOSED_BY_ITERATOR)
            await asyncio.wait([running.task])
        await batch.aclose()

    try:
        call = loop_thread.submit(shut_down)
    except RuntimeError:
        return  # the client is closed, and its loop closed every batch
    if loop_thread.on_loop_thread or sys.is_finalizing():
        return  # waiting here would never end; the loop does it by itself
    with contextlib.suppress(RuntimeError):  # the client was closed meanwhile
        loop_thread.wait(call)
