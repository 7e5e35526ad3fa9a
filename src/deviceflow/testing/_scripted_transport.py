"""ScriptedTransport: a :class:`deviceflow.Transport` that answers from a test's script.

It stands where the network would be (the client's ``transport=`` seam): each request gets the
next scripted answer, is recorded, and can be held "on the wire" until the test releases it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import overload

from deviceflow._models import Request, RequestKind, Response
from deviceflow._transport import Transport

__all__ = ["Answer", "AnswerFunction", "ScriptExhaustedError", "ScriptedTransport"]

#: Computes the answer to one request; it may be a coroutine function, and may raise.
AnswerFunction = Callable[[Request], Response | Awaitable[Response]]
#: One scripted answer: a Response, an exception to raise, or a function of the request.
Answer = Response | BaseException | AnswerFunction


class ScriptExhaustedError(AssertionError):
    """A :class:`ScriptedTransport` got a request that its script has no answer left for.

    An AssertionError, not a :class:`~deviceflow.DeviceFlowError`, so that the client under
    test does not take it for a network failure and carry on: the test's script is wrong.
    ``request`` is the request that found the script empty.
    """

    def __init__(self, request: Request, number: int) -> None:
        # The params stay out of the message: they may hold a refresh token or device code.
        super().__init__(
            f"ScriptedTransport has no answer for request #{number} "
            f"({request.kind.value}: {request.method} {request.url}); script more with "
            "add(), or pass fallback= to answer unscripted requests"
        )
        self.request = request


class ScriptedTransport:
    """A Transport that answers from a script, for tests of code that sends requests.

    Pass it as a client's ``transport=``. Each request takes the next answer scripted for its
    :class:`~deviceflow.RequestKind`, then the next answer scripted for any kind, then goes to
    ``fallback``; when none is left the request raises :class:`ScriptExhaustedError`. An answer
    (``Answer``) is one of:

    - a :class:`~deviceflow.Response`, returned as is;
    - an exception instance, raised (``TransportError("reset")`` for a network failure);
    - a function taking the :class:`~deviceflow.Request` and returning a Response
      (``AnswerFunction``; it may be a coroutine function, and may raise).

    ``answers`` is a list for any kind, or a mapping from kind to list::

        token = Response(status=200, headers={"content-type": "application/json"},
                         body=b'{"access_token": "at", "token_type": "Bearer"}')
        transport = ScriptedTransport({RequestKind.TOKEN: [TransportError("reset"), token]})
        async with DeviceFlowClient(provider, client_id="bot", transport=transport) as client:
            await client.save_token("bot", expired_token)
            assert "at" == (await client.get_token("bot")).access_token  # retried, then refreshed
        assert [RequestKind.TOKEN] * 2 == [r.kind for r in transport.requests]

    ``fallback`` answers whatever the script does not: another transport (say a real
    ``AiohttpTransport`` talking to an :class:`AuthorizationServer`, so only a few answers are
    scripted and the rest are real), or an answer function. :meth:`aclose` closes a fallback
    transport too, as the client closes its transport when it closes.

    :meth:`hold` keeps answers "on the wire": the request is answered (a fallback server has
    handled it) but the caller gets the answer only after :meth:`release`::

        transport = ScriptedTransport(fallback=AiohttpTransport(auth=ClientAuth(client_id="svc")))
        transport.hold(RequestKind.TOKEN)
        refreshing = asyncio.ensure_future(client.get_token("a"))
        await transport.wait_held()     # the server has rotated the refresh token by now
        ...                             # close the client, cancel, race another replica
        transport.release()

    Every answer comes after one pass through the event loop, as from a network. ``timeout``
    is passed on to a fallback transport; scripted answers ignore it.
    """

    # Two overloads, so that type checkers infer a literal script's element type from either.
    @overload
    def __init__(
        self,
        answers: Mapping[RequestKind, Iterable[Answer]],
        *,
        fallback: Transport | AnswerFunction | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        answers: Iterable[Answer] = (),
        *,
        fallback: Transport | AnswerFunction | None = None,
    ) -> None: ...

    def __init__(
        self,
        answers: Iterable[Answer] | Mapping[RequestKind, Iterable[Answer]] = (),
        *,
        fallback: Transport | AnswerFunction | None = None,
    ) -> None:
        self._any: deque[Answer] = deque()
        self._by_kind: dict[RequestKind, deque[Answer]] = {}
        if isinstance(answers, Mapping):
            for kind, script in answers.items():
                self.add(*script, kind=kind)
        else:
            self.add(*answers)
        self._fallback_transport: Transport | None = None
        self._fallback_function: AnswerFunction | None = None
        if callable(fallback):
            self._fallback_function = fallback
        else:
            self._fallback_transport = fallback
        self._requests: list[Request] = []
        self._holding: frozenset[RequestKind] = frozenset()
        self._gate: asyncio.Event | None = None
        self._held: list[Request] = []
        self._held_changed: asyncio.Event | None = None
        self._closed = False

    # -- the script ---------------------------------------------------------------------------

    def add(self, *answers: Answer, kind: RequestKind | None = None) -> None:
        """Append ``answers`` to the script of ``kind``, or to the script for any kind."""
        if kind is None:
            self._any.extend(answers)
        else:
            self._by_kind.setdefault(kind, deque()).extend(answers)

    def remaining(self, kind: RequestKind | None = None) -> int:
        """How many answers scripted for ``kind`` are left; all of them without ``kind``."""
        if kind is None:
            return len(self._any) + sum(len(script) for script in self._by_kind.values())
        return len(self._by_kind.get(kind, ()))

    @property
    def requests(self) -> list[Request]:
        """Every request received so far, in order of arrival (a copy)."""
        return list(self._requests)

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closed

    # -- holding answers ----------------------------------------------------------------------

    def hold(self, *kinds: RequestKind) -> None:
        """Hold the answers to requests of ``kinds`` (every kind when none is given).

        A held request has been answered, but its caller waits until :meth:`release`.
        """
        self._holding = frozenset(kinds or RequestKind)
        if self._gate is None:
            self._gate = asyncio.Event()

    def release(self) -> None:
        """Give the held answers to their callers, and stop holding."""
        gate, self._gate = self._gate, None
        self._holding = frozenset()
        if gate is not None:
            gate.set()

    @property
    def held(self) -> list[Request]:
        """The requests whose answers are held now, oldest first."""
        return list(self._held)

    async def wait_held(self, count: int = 1, *, timeout: float | None = 10.0) -> list[Request]:
        """Wait until ``count`` answers are held; return the held requests.

        ``timeout`` is in real seconds (``None``: wait for ever); TimeoutError when it runs out.
        """

        async def enough() -> None:
            while len(self._held) < count:
                if self._held_changed is None:
                    self._held_changed = asyncio.Event()
                await self._held_changed.wait()

        try:
            await asyncio.wait_for(enough(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"fewer than {count} answers were held within {timeout} s") from None
        return self.held

    # -- the Transport protocol ---------------------------------------------------------------

    async def send(self, request: Request, *, timeout: float | None = None) -> Response:
        """Record ``request`` and answer it from the script, or else from the fallback."""
        self._requests.append(request)
        number = len(self._requests)
        await asyncio.sleep(0)  # a network never answers synchronously
        answer = self._next(request)
        outcome: Response | BaseException
        if answer is None:
            if self._fallback_transport is None:
                raise ScriptExhaustedError(request, number)
            try:
                outcome = await self._fallback_transport.send(request, timeout=timeout)
            except Exception as exc:
                outcome = exc
        elif isinstance(answer, (Response, BaseException)):
            outcome = answer
        else:
            try:
                outcome = await _call(answer, request)
            except Exception as exc:
                outcome = exc
        if self._gate is not None and request.kind in self._holding:
            await self._wait_for_release(request, self._gate)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        """Mark the transport closed and close a fallback transport."""
        self._closed = True
        if self._fallback_transport is not None:
            await self._fallback_transport.aclose()

    def _next(self, request: Request) -> Answer | None:
        script = self._by_kind.get(request.kind)
        if script:
            return script.popleft()
        if self._any:
            return self._any.popleft()
        return self._fallback_function

    async def _wait_for_release(self, request: Request, gate: asyncio.Event) -> None:
        self._held.append(request)
        self._held_updated()
        try:
            await gate.wait()
        finally:
            # By identity: two equal requests may be held at once.
            index = next(i for i, held in enumerate(self._held) if held is request)
            del self._held[index]
            self._held_updated()

    def _held_updated(self) -> None:
        changed, self._held_changed = self._held_changed, None
        if changed is not None:
            changed.set()


async def _call(function: AnswerFunction, request: Request) -> Response:
    result = function(request)
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, Response):
        raise TypeError(f"a scripted answer function returned {type(result).__name__}, no Response")
    return result
