"""deviceflow for blocking code: the same client, with blocking methods.

::

    from deviceflow import Provider
    from deviceflow.sync import DeviceFlowClient

    with DeviceFlowClient(
        Provider(issuer="https://idp.example.com"),
        client_id="reporting",
        on_code=lambda code, account: print(code.user_code, code.verification_uri),
    ) as client:
        token = client.get_token("tenant-42")

The client runs a :class:`deviceflow.DeviceFlowClient` on an event loop of its own, in a
background thread started through anyio's blocking portal; every method hands its call to that
loop and waits for the answer. So one client may be shared by any number of threads and keeps
every guarantee of the asyncio client: one refresh per account at a time (the other threads wait
for it), one device flow per account, a rotated refresh token stored before it is returned.

It works from any thread, one that runs an event loop of its own included (a Jupyter cell, an
asyncio program calling blocking code): the work happens on the client's loop, so nothing
deadlocks, but the calling thread waits, and while it waits its own loop runs nothing else.
Whether to block a running loop that way is the caller's choice; asyncio code should prefer
the asyncio client.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import inspect
import queue
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

from ._client import DeviceFlowClient as AsyncDeviceFlowClient
from ._client import OnCode
from ._identity import Identity, VerifyIdentity
from ._models import AuthMethod, FlowEvent, Token

if TYPE_CHECKING:
    from ._clock import Clock
    from ._provider import Provider
    from ._transport import Transport
    from .stores._protocol import TokenStore

__all__ = ["DeviceFlowClient"]

_T = TypeVar("_T")
_A = TypeVar("_A")
_R = TypeVar("_R")


class DeviceFlowClient:
    """A blocking :class:`deviceflow.DeviceFlowClient`: the same constructor and methods.

    ``on_code(code, account)`` and ``verify_identity(identity, account)`` may be plain
    functions or coroutine functions. A plain one is called in a worker thread, so it may block
    (wait for a person, open a dialog, look the person up in a database) without holding up
    the refreshes of other accounts; a coroutine function runs on the client's loop.

    The asyncio client's ``session`` argument has no counterpart: an aiohttp session belongs to
    the event loop it was made on, and this client runs its own.

    Close it with :meth:`close` or a ``with`` block: that stops its thread, after letting a
    refresh on the wire be stored (see :meth:`deviceflow.DeviceFlowClient.aclose`). Calls after
    that raise RuntimeError.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        client_id: str,
        client_secret: str | None = None,
        client_auth: AuthMethod | None = None,
        scope: str | Iterable[str] | None = None,
        store: TokenStore | None = None,
        on_code: OnCode | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
        refresh_skew: float = 60.0,
        http_timeout: float = 20.0,
        lock_ttl: float = 36.0,
        lock_wait: float = 60.0,
        poll_margin: float = 0.1,
        verify_identity: VerifyIdentity | None = None,
        dpop: bool = False,
    ) -> None:
        if on_code is not None and not callable(on_code):
            raise TypeError(f"on_code must be a callable or None, not {type(on_code).__name__}")
        if verify_identity is not None and not callable(verify_identity):
            raise TypeError("verify_identity must be a callable (identity, account) -> bool")
        self.on_code = on_code
        self._closing = threading.Lock()
        self._closed = False
        # The tasks feeding authorize() iterators: each waits for its reader to take an event,
        # so an iterator abandoned mid-flow would keep close() waiting forever; close() cancels
        # them instead.
        self._feeders: set[concurrent.futures.Future[None]] = set()
        self._exit = contextlib.ExitStack()
        self._portal = self._exit.enter_context(anyio.from_thread.start_blocking_portal())
        try:
            # Made on the loop it will run on (its locks and tasks belong to that loop).
            self._client = self._portal.call(
                functools.partial(
                    AsyncDeviceFlowClient,
                    provider,
                    client_id=client_id,
                    client_secret=client_secret,
                    client_auth=client_auth,
                    scope=scope,
                    store=store,
                    on_code=None if on_code is None else _off_the_loop(on_code),
                    transport=transport,
                    clock=clock,
                    refresh_skew=refresh_skew,
                    http_timeout=http_timeout,
                    lock_ttl=lock_ttl,
                    lock_wait=lock_wait,
                    poll_margin=poll_margin,
                    verify_identity=(
                        None if verify_identity is None else _off_the_loop(verify_identity)
                    ),
                    dpop=dpop,
                )
            )
        except BaseException:
            self._exit.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<deviceflow.sync.DeviceFlowClient client_id={self.client_id!r} {state}>"

    # --- what the asyncio client knows ----------------------------------------------------------

    @property
    def provider(self) -> Provider:
        """The provider, as the asyncio client holds it."""
        return self._client.provider

    @property
    def client_id(self) -> str:
        """The OAuth client id."""
        return self._client.client_id

    @property
    def scope(self) -> str | None:
        """The scope asked for (the provider's default when none was given)."""
        return self._client.scope

    @property
    def store(self) -> TokenStore:
        """The token store."""
        return self._client.store

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> DeviceFlowClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the asyncio client (see :meth:`deviceflow.DeviceFlowClient.aclose`) and stop
        the background thread. Closing twice does nothing."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            feeders, self._feeders = self._feeders, set()
        for feeder in feeders:
            feeder.cancel()  # an abandoned authorize() iterator must not block the close
        try:
            self._portal.call(self._client.aclose)
        finally:
            self._exit.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    # --- the methods --------------------------------------------------------------------------

    def get_token(self, account: str = "default", *, timeout: float | None = None) -> Token:
        """Blocking :meth:`deviceflow.DeviceFlowClient.get_token`: a valid access token for
        ``account``, cached, refreshed, or from a new device flow (one per account, whatever
        the number of threads asking)."""
        return self._call(functools.partial(self._client.get_token, account, timeout=timeout))

    def refresh(self, account: str = "default", *, stale: Token | None = None) -> Token:
        """Blocking :meth:`deviceflow.DeviceFlowClient.refresh`."""
        return self._call(functools.partial(self._client.refresh, account, stale=stale))

    def request_headers(
        self,
        method: str,
        url: str,
        account: str = "default",
        *,
        dpop_nonce: str | None = None,
    ) -> dict[str, str]:
        """Blocking :meth:`deviceflow.DeviceFlowClient.request_headers`: the headers that
        authorize ``method url`` with ``account``'s token (for a DPoP token, with a new proof
        every call)."""
        return self._call(
            functools.partial(
                self._client.request_headers, method, url, account, dpop_nonce=dpop_nonce
            )
        )

    def identity(self, account: str = "default") -> Identity:
        """Blocking :meth:`deviceflow.DeviceFlowClient.identity`: who signed in to
        ``account``, from its verified id_token; IdentityError when there is none."""
        return self._call(functools.partial(self._client.identity, account))

    def save_token(self, account: str, token: Token) -> None:
        """Blocking :meth:`deviceflow.DeviceFlowClient.save_token`."""
        self._call(functools.partial(self._client.save_token, account, token))

    def logout(self, account: str = "default", *, force: bool = False) -> bool:
        """Blocking :meth:`deviceflow.DeviceFlowClient.logout`."""
        return self._call(functools.partial(self._client.logout, account, force=force))

    def flush(self) -> bool:
        """Blocking :meth:`deviceflow.DeviceFlowClient.flush`."""
        return self._call(self._client.flush)

    def unsaved_accounts(self) -> frozenset[str]:
        """See :meth:`deviceflow.DeviceFlowClient.unsaved_accounts`."""
        self._check_open()
        return self._portal.call(self._client.unsaved_accounts)  # read on the loop's thread

    def store_key(self, account: str = "default") -> str:
        """See :meth:`deviceflow.DeviceFlowClient.store_key`."""
        return self._client.store_key(account)

    def authorize(self, account: str = "default", *, store: bool = True) -> Iterator[FlowEvent]:
        """Blocking :meth:`deviceflow.DeviceFlowClient.authorize`: one device flow, a
        FlowEvent at every change of state. Leaving the loop early stops the flow.

        >>> for event in client.authorize("bot"):  # doctest: +SKIP
        ...     if event.state is FlowState.PENDING and event.code:
        ...         print(event.code.user_code, event.code.verification_uri)
        """
        events: queue.SimpleQueue[tuple[FlowEvent, anyio.Event] | None] = queue.SimpleQueue()

        async def pump() -> None:
            async for event in self._client.authorize(account, store=store):
                taken = anyio.Event()
                events.put((event, taken))
                await taken.wait()  # in step with the reader, as `async for` would be

        with self._closing:  # registered before close() can take the set, or refused
            self._check_open()
            future = self._portal.start_task_soon(pump)
            self._feeders.add(future)
        future.add_done_callback(lambda _: events.put(None))
        try:
            while (item := events.get()) is not None:
                event, taken = item
                yield event
                self._check_open()  # closed while the reader held the event
                self._portal.call(taken.set)
            self._check_open()  # cancelled by close() while the reader waited
            future.result()  # an error of the flow itself, if it had one
        finally:
            future.cancel()  # the loop was left early: the flow stops (a no-op once done)
            with self._closing:
                self._feeders.discard(future)

    # --- plumbing -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this deviceflow.sync.DeviceFlowClient is closed")

    def _call(self, func: Callable[[], Awaitable[_T]]) -> _T:
        self._check_open()
        future = self._portal.start_task_soon(func)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C in the waiting thread: this call's task stops too (a shared refresh or
            # device flow goes on for the other callers).
            future.cancel()
            raise


def _off_the_loop(
    callback: Callable[[_A, str], _R | Awaitable[_R]],
) -> Callable[[_A, str], Awaitable[_R]]:
    """A user's callback (``on_code``, ``verify_identity``) as the asyncio client calls it: a
    plain function runs in a worker thread, a coroutine function on the client's loop."""
    if inspect.iscoroutinefunction(callback):
        return callback

    async def call(first: _A, account: str) -> _R:
        result = await anyio.to_thread.run_sync(callback, first, account)
        if inspect.isawaitable(result):
            return await result  # a plain function that returned an awaitable
        return result

    return call
