"""The verification page's handlers (RFC 8628 3.3): the user enters a code and decides.

``_page`` renders the HTML; these handlers look the code up, tie each confirm form to its code
with an HMAC (so only a page this server rendered can decide), and record the decision.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import attrs
from aiohttp import web

from deviceflow._clock import Clock

from . import _page
from ._edge import html
from ._state import AuthorizationState, normalize_user_code

__all__ = ["VerificationPage"]


@attrs.define(kw_only=True)
class VerificationPage:
    """GET shows the entry form or, for a pending code, the confirm form; POST decides."""

    _state: AuthorizationState
    _clock: Clock
    _csrf_key: bytes = attrs.field(factory=lambda: secrets.token_bytes(32), repr=False)

    async def get(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """The entry form, or the confirm form for the pending code in ``?user_code=``."""
        action = request.path
        typed = request.query.get("user_code")
        if typed is None:
            return html(_page.entry_page(action=action))
        code = self._state.find(typed)
        now = self._clock.monotonic()
        if code is None or code.expired_at(now) or code.status != "pending":
            return html(
                _page.entry_page(
                    action=action,
                    value=typed,
                    message="That code is not valid, has expired or was already used. "
                    "Check the code shown on your device and try again.",
                ),
                status=404,
            )
        scope = " ".join(code.scope) if code.scope is not None else None
        return html(
            _page.confirm_page(
                action=action,
                user_code=code.user_code,
                client_id=code.client_id,
                scope=scope,
                csrf=self._csrf(code.user_code),
            )
        )

    async def post(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """Approve or deny the code, when the form came from this server's confirm page."""
        typed = params.get("user_code", "")
        decision = params.get("action")
        csrf = params.get("csrf", "")
        if decision not in ("approve", "deny") or not hmac.compare_digest(
            csrf.encode(), self._csrf(typed).encode()
        ):
            return html(
                _page.result_page(
                    title="Request not accepted",
                    text="The form was incomplete or has expired. Open the link again.",
                ),
                status=400,
            )
        code = self._state.find(typed)
        try:
            if code is None:
                raise ValueError("unknown code")
            self._state.decide(code, approve=decision == "approve", now=self._clock.monotonic())
        except ValueError:
            return html(
                _page.result_page(
                    title="Code not valid",
                    text="That code has expired or was already used. Start again on your device.",
                ),
                status=409,
            )
        if decision == "approve":
            return html(
                _page.result_page(
                    title="Device approved",
                    text="You may close this window and return to your device.",
                )
            )
        return html(
            _page.result_page(
                title="Request denied",
                text="The device was not given access. You may close this window.",
            )
        )

    def _csrf(self, user_code: str) -> str:
        # The confirm page's form carries this, so only a page this server rendered can decide.
        key = normalize_user_code(user_code).encode()
        return hmac.new(self._csrf_key, key, hashlib.sha256).hexdigest()
