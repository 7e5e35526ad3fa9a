"""The test server's aiohttp application: its limits and route table, and serving it.

Paths come from the provider profile, below the issuer path. Every route goes through the HTTP
edge; a catch-all answers any other request 404, or 405 with ``Allow`` on a known path.
"""

from __future__ import annotations

from aiohttp import web

from ._edge import MAX_BODY, MAX_FIELDS, Handler, HttpEdge
from ._endpoints import Endpoints
from ._faults import Endpoint
from ._profiles import Profile
from ._verification import VerificationPage

__all__ = ["build_app", "serve"]


def build_app(
    *,
    profile: Profile,
    issuer_path: str,
    edge: HttpEdge,
    endpoints: Endpoints,
    page: VerificationPage,
) -> web.Application:
    """The application serving ``profile``'s endpoints below ``issuer_path``."""
    app = web.Application(client_max_size=MAX_BODY, client_max_fields=MAX_FIELDS)
    prefix = issuer_path
    routes: list[tuple[str, str, Endpoint, Handler]] = []
    if profile.discovery:
        routes += [
            ("GET", f"{prefix}/.well-known/openid-configuration", "discovery", endpoints.discovery),
            (
                "GET",
                f"/.well-known/oauth-authorization-server{prefix}",
                "discovery",
                endpoints.discovery,
            ),
        ]
    if profile.registration_path is not None:
        routes.append(
            ("POST", prefix + profile.registration_path, "registration", endpoints.register)
        )
    routes += [
        ("POST", prefix + profile.device_authorization_path, "device", endpoints.device),
        ("POST", prefix + profile.token_path, "token", endpoints.token),
        ("POST", prefix + profile.revocation_path, "revoke", endpoints.revoke),
        ("GET", prefix + profile.resource_path, "resource", endpoints.resource),
        ("GET", prefix + profile.jwks_path, "jwks", endpoints.jwks),
        ("GET", prefix + profile.verification_path, "verification", page.get),
        ("POST", prefix + profile.verification_path, "verification", page.post),
    ]
    allowed: dict[str, set[str]] = {}
    names: dict[str, Endpoint] = {}
    for method, path, endpoint, handler in routes:
        app.router.add_route(method, path, edge.wrap(endpoint, handler))
        allowed.setdefault(path, set()).add(method)
        names[path] = endpoint

    async def other(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
        methods = allowed.get(request.path)
        if methods is not None:
            return web.Response(status=405, headers={"Allow": ", ".join(sorted(methods))})
        return web.Response(status=404, text="not found")

    app.router.add_route("*", "/{tail:.*}", edge.wrap(names, other))
    return app


async def serve(app: web.Application, *, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on ``host`` and ``port`` (0: a free one); clean up the runner to stop."""
    # A handler whose client went away (say, after a delay fault) is cancelled, and close
    # does not wait long for handlers still running: this is a test server.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=0.1,
        handler_cancellation=True,
    )
    await runner.setup()
    # "localhost" may resolve to both ::1 and 127.0.0.1, which would get two different free
    # ports; bind one address so the issuer names exactly one server.
    bind = "127.0.0.1" if host == "localhost" else host
    try:
        site = web.TCPSite(runner, bind, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
