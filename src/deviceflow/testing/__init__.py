"""A compliant RFC 8628 authorization server for tests, and the tools around it.

Downstream projects test their own device-flow clients with it::

    from deviceflow.testing import AuthorizationServer, VirtualClock

    async def test_my_bot_signs_in() -> None:
        clock = VirtualClock()
        async with AuthorizationServer(clock=clock, auto_approve_after=1) as server:
            ...  # point the client at server.issuer, sharing the clock

With pytest, the ``authorization_server`` and ``virtual_clock`` fixtures come with the package
(the plugin registers itself). ``python -m deviceflow.testing`` runs the server on its own.
:class:`ScriptedTransport` answers a client's requests from a script instead of a server.
"""

from ._clock import VirtualClock
from ._faults import Fault, FaultList
from ._faulty_store import FaultyStore
from ._id_tokens import IdTokens
from ._profiles import PROFILES, RFC, Profile
from ._scripted_transport import ScriptedTransport, ScriptExhaustedError
from ._server import AuthorizationServer, RecordedRequest
from ._state import ServerStats

__all__ = [
    "PROFILES",
    "RFC",
    "AuthorizationServer",
    "Fault",
    "FaultList",
    "FaultyStore",
    "IdTokens",
    "Profile",
    "RecordedRequest",
    "ScriptExhaustedError",
    "ScriptedTransport",
    "ServerStats",
    "VirtualClock",
]
