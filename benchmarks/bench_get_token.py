"""get_token() against baselines and a peer, measured in one run (issue 4).

(a) Cached get_token with 100,000 accounts in a MemoryStore (seeded with save_token): median
    latency per call beside a bare async function doing a dict lookup and an expiry comparison
    (and, for information, the same as a plain function). Target: within 3x of the async baseline.
(b) 1,000 expired accounts refreshed concurrently against the test server in its own process,
    beside bare aiohttp POSTing the same 1,000 refresh requests at the same concurrency (1,000
    tasks, one session, the same connector limit). The 2,000 grants come from real device flows
    up front; each round reuses the refresh tokens the previous round rotated. Target: wall time
    1.3x the bare POSTs or better.
(c) Peer: MSAL Python's PublicClientApplication.acquire_token_silent with 1,000 and 10,000
    accounts in its SerializableTokenCache, beside get_token with as many accounts. MSAL never
    touches the network: a fake http_client answers its OpenID discovery GET.

Latencies are per call, measured over batches of calls (a timer per call would cost as much as
the call), net of the bare ``for``-loop's own cost, with the median over batches; ratios are
taken between contenders timed on the same batches, interleaved.

Run: ``python benchmarks/bench_get_token.py [--accounts N] [--refresh N] [--rounds R]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import aiohttp
import attrs

from _harness import ServerProcess, machine, median, server_process, table
from deviceflow import DeviceFlowClient, FlowState, Provider, Token

CLIENT_ID = "bench"
SCOPE = "openid offline_access"
LIMIT = 100  # connections per session, both sides of (b)
BATCH = 1000
TARGET_CACHED = 3.0
TARGET_REFRESH = 1.3

# A provider that is never contacted in (a) and (c): every token is cached.
OFFLINE = Provider(
    issuer="https://idp.example.test",
    device_authorization_endpoint="https://idp.example.test/device",
    token_endpoint="https://idp.example.test/token",
)

T = TypeVar("T")
AsyncCall = Callable[[str], Awaitable[Any]]
SyncCall = Callable[[str], Any]


# --- timing helpers -------------------------------------------------------------------------


async def time_async(call: AsyncCall, batch: Sequence[str]) -> int:
    start = time.perf_counter_ns()
    for account in batch:
        await call(account)
    return time.perf_counter_ns() - start


def time_sync(call: SyncCall, batch: Sequence[str]) -> int:
    start = time.perf_counter_ns()
    for account in batch:
        call(account)
    return time.perf_counter_ns() - start


def time_empty(batch: Sequence[str]) -> int:
    start = time.perf_counter_ns()
    for _account in batch:
        pass
    return time.perf_counter_ns() - start


def batches(accounts: Sequence[str], calls: int, seed: int) -> list[list[str]]:
    """``calls`` calls in batches of BATCH, over the accounts in random order, repeated."""
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < calls:
        chunk = list(accounts)
        rng.shuffle(chunk)
        order += chunk
    order = order[:calls]
    return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]


async def latencies(
    async_calls: dict[str, AsyncCall],
    sync_calls: dict[str, SyncCall],
    work: list[list[str]],
) -> dict[str, list[float]]:
    """Nanoseconds per call for each contender and batch, net of the loop; interleaved."""
    names = [*async_calls, *sync_calls]
    out: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc.disable()  # a collection landing in one contender's batch would only add noise
    try:
        for i, batch in enumerate(work):
            loop_ns = min(time_empty(batch) for _ in range(3))
            # Rotate the order within each batch so no contender always goes first.
            for name in names[i % len(names) :] + names[: i % len(names)]:
                if name in async_calls:
                    ns = await time_async(async_calls[name], batch)
                else:
                    ns = time_sync(sync_calls[name], batch)
                out[name].append(max(0, ns - loop_ns) / len(batch))
    finally:
        gc.enable()
    return out


def ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-batch ratios: each pair was timed on the same batch."""
    return median([n / d for n, d in zip(num, den, strict=True)])


# --- seeding deviceflow ---------------------------------------------------------------------


def accounts_named(n: int) -> list[str]:
    return [f"tenant-{i:06d}" for i in range(n)]


async def seeded_client(accounts: Sequence[str]) -> DeviceFlowClient:
    """A client whose MemoryStore (and memory cache) holds a fresh token for every account."""
    client = DeviceFlowClient(OFFLINE, client_id=CLIENT_ID, scope=SCOPE)
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    for i, account in enumerate(accounts):
        token = Token(access_token=f"at-{i}", refresh_token=f"rt-{i}", expires_at=expires)
        await client.save_token(account, token)
    return client


# --- (a) cached get_token vs a dict lookup --------------------------------------------------


class _Entry:
    __slots__ = ("expires", "token")

    def __init__(self, token: Token, expires: float) -> None:
        self.token = token
        self.expires = expires


def baselines(accounts: Sequence[str]) -> tuple[AsyncCall, SyncCall]:
    """The least a cache can do: look the account up, compare its expiry with the clock."""
    monotonic = time.monotonic
    token = Token(access_token="at", expires_at=datetime.now(timezone.utc) + timedelta(hours=1))
    cache = {a: _Entry(token, monotonic() + 3600 - 60) for a in accounts}

    async def async_baseline(account: str) -> Token:
        entry = cache.get(account)
        if entry is not None and monotonic() < entry.expires:
            return entry.token
        raise LookupError(account)

    def sync_baseline(account: str) -> Token:
        entry = cache.get(account)
        if entry is not None and monotonic() < entry.expires:
            return entry.token
        raise LookupError(account)

    return async_baseline, sync_baseline


async def bench_cached(n: int, calls: int) -> list[list[str]]:
    accounts = accounts_named(n)
    seed_start = time.perf_counter()
    client = await seeded_client(accounts)
    seed_s = time.perf_counter() - seed_start
    async_baseline, sync_baseline = baselines(accounts)
    assert (await client.get_token(accounts[-1])).access_token == f"at-{n - 1}"
    work = batches(accounts, calls, seed=1)
    ns = await latencies(
        {"get_token": client.get_token, "async baseline": async_baseline},
        {"sync baseline": sync_baseline},
        work,
    )
    await client.aclose()
    base = median(ns["async baseline"])
    rows = []
    for name in ("get_token", "async baseline", "sync baseline"):
        rows.append(
            [
                name,
                f"{median(ns[name]):.0f}",
                f"{median(ns[name]) / base:.2f}x",
                f"{ratio(ns[name], ns['async baseline']):.2f}x",
            ]
        )
    print(f"(a) cached get_token, {n:,} accounts in a MemoryStore (seeded in {seed_s:.1f} s)")
    print(f"    {len(work)} batches of {BATCH} calls, random accounts, ns per call\n")
    print(table(["contender", "median ns/call", "ratio", "ratio (per batch)"], rows))
    r = ratio(ns["get_token"], ns["async baseline"])
    verdict = "met" if r <= TARGET_CACHED else "MISSED"
    print(f"\n    get_token is {r:.2f}x the async baseline (target <= {TARGET_CACHED}x): {verdict}")
    return work


# --- (b) refreshing 1,000 expired accounts --------------------------------------------------


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=LIMIT))


def provider_for(server: ServerProcess) -> Provider:
    return Provider(
        issuer=server.issuer,
        device_authorization_endpoint=server.device_authorization_endpoint,
        token_endpoint=server.token_endpoint,
        revocation_endpoint=server.revocation_endpoint,
    )


async def harvest(server: ServerProcess, n: int) -> list[Token]:
    """``n`` grants through real device flows (the server approves every code at once)."""

    async def one(client: DeviceFlowClient, i: int) -> Token:
        async for event in client.authorize(f"grant-{i}", store=False):
            if event.state is FlowState.GRANTED and event.token is not None:
                return event.token
        raise RuntimeError(f"device flow {i} ended without a token")

    async with DeviceFlowClient(provider_for(server), client_id=CLIENT_ID, scope=SCOPE) as c:
        return list(await asyncio.gather(*(one(c, i) for i in range(n))))


@attrs.frozen
class Sample:
    wall: float
    cpu: float  # this process
    server_cpu: float
    full_gcs: int  # generation-2 collections of this process during the run


async def timed(server: ServerProcess, work: Awaitable[T]) -> tuple[Sample, T]:
    gc.collect()
    full_gcs = gc.get_stats()[2]["collections"]
    server_cpu = server.cpu()
    cpu, wall = time.process_time(), time.perf_counter()
    result = await work
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sample = Sample(
        wall=wall,
        cpu=cpu,
        server_cpu=server.cpu() - server_cpu,
        full_gcs=gc.get_stats()[2]["collections"] - full_gcs,
    )
    return sample, result


async def refresh_deviceflow(
    server: ServerProcess, tokens: list[Token]
) -> tuple[Sample, list[Token]]:
    """get_token for accounts whose stored tokens have expired: one refresh each."""
    past = datetime.now(timezone.utc) - timedelta(minutes=5)
    accounts = [f"acct-{i}" for i in range(len(tokens))]
    async with new_session() as session:
        client = DeviceFlowClient(
            provider_for(server), client_id=CLIENT_ID, scope=SCOPE, session=session
        )
        for account, token in zip(accounts, tokens, strict=True):
            await client.save_token(account, attrs.evolve(token, expires_at=past))
        sample, fresh = await timed(
            server, asyncio.gather(*(client.get_token(a) for a in accounts))
        )
        await client.aclose()
    old = {t.access_token for t in tokens}
    if any(t.access_token in old or t.expires_within(60) for t in fresh):
        raise RuntimeError("deviceflow returned a token that was not refreshed")
    return sample, list(fresh)


async def bare_refresh(
    session: aiohttp.ClientSession, server: ServerProcess, refresh_token: str
) -> str:
    """POST one refresh request, parse the answer; returns the refresh token to use next."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT_ID}
    async with session.post(
        server.token_endpoint, data=form, headers={"Accept": "application/json"}
    ) as resp:
        body: dict[str, Any] = json.loads(await resp.read())
    if "access_token" not in body:
        raise RuntimeError(f"bare refresh failed: {body.get('error')}")
    return str(body.get("refresh_token") or refresh_token)


async def refresh_bare(
    server: ServerProcess, refresh_tokens: list[str]
) -> tuple[Sample, list[str]]:
    async with new_session() as session:
        sample, rotated = await timed(
            server, asyncio.gather(*(bare_refresh(session, server, t) for t in refresh_tokens))
        )
    return sample, list(rotated)


async def bench_refresh(n: int, rounds: int) -> None:
    with server_process("--interval", "1", "--auto-approve", "0") as server:
        start = time.perf_counter()
        grants = await harvest(server, 2 * n)
        print(f"(b) refresh of {n:,} expired accounts, {rounds} rounds, medians")
        took = time.perf_counter() - start
        print(f"    {2 * n:,} grants from real device flows in {took:.1f} s\n")
        df_tokens = grants[:n]
        bare_tokens = [t.refresh_token or "" for t in grants[n:]]
        df: list[Sample] = []
        bare: list[Sample] = []
        for r in range(rounds):
            # Alternate which side goes first in a round.
            if r % 2 == 0:
                d, df_tokens = await refresh_deviceflow(server, df_tokens)
                b, bare_tokens = await refresh_bare(server, bare_tokens)
            else:
                b, bare_tokens = await refresh_bare(server, bare_tokens)
                d, df_tokens = await refresh_deviceflow(server, df_tokens)
            df.append(d)
            bare.append(b)
            print(
                f"    round {r + 1}: deviceflow {d.wall:.3f} s wall, {d.cpu:.3f} s cpu "
                f"(server {d.server_cpu:.3f} s); bare {b.wall:.3f} s wall, {b.cpu:.3f} s cpu "
                f"(server {b.server_cpu:.3f} s); wall ratio {d.wall / b.wall:.2f}x",
                flush=True,
            )
    wall_ratio = median([d.wall / b.wall for d, b in zip(df, bare, strict=True)])
    cpu_ratio = median([d.cpu / b.cpu for d, b in zip(df, bare, strict=True)])
    rows = []
    for name, samples, wr, cr in (
        ("deviceflow get_token", df, wall_ratio, cpu_ratio),
        ("bare aiohttp POSTs", bare, 1.0, 1.0),
    ):
        rows.append(
            [
                name,
                f"{median([s.wall for s in samples]):.3f}",
                f"{wr:.2f}x",
                f"{median([s.cpu for s in samples]) / n * 1e6:.0f}",
                f"{cr:.2f}x",
                f"{median([s.server_cpu for s in samples]) / n * 1e6:.0f}",
                f"{median([s.full_gcs for s in samples]):.0f}",
            ]
        )
    print()
    header = ["contender", "wall s", "wall ratio", "client cpu/refresh us", "cpu ratio"]
    print(table([*header, "server cpu/refresh us", "full GCs"], rows))
    print("    (ratios: median of the per-round ratios)")
    verdict = "met" if wall_ratio <= TARGET_REFRESH else "MISSED"
    print(f"\n    wall {wall_ratio:.2f}x the bare POSTs (target <= {TARGET_REFRESH}x): {verdict}")


# --- (c) MSAL's acquire_token_silent --------------------------------------------------------

MSAL_AUTHORITY = "https://login.example.test/tenant-x"
MSAL_SCOPES = ["api://bench/read"]
MSAL_CONFIG = {
    "issuer": MSAL_AUTHORITY + "/v2.0",
    "authorization_endpoint": MSAL_AUTHORITY + "/oauth2/v2.0/authorize",
    "token_endpoint": MSAL_AUTHORITY + "/oauth2/v2.0/token",
    "device_authorization_endpoint": MSAL_AUTHORITY + "/oauth2/v2.0/devicecode",
}


class _FakeResponse:
    def __init__(self, text: str) -> None:
        self.status_code = 200
        self.text = text
        self.headers: dict[str, str] = {}

    def raise_for_status(self) -> None:
        pass


class FakeHttp:
    """MSAL's http_client: answers discovery GETs with a canned document, refuses the rest."""

    def __init__(self) -> None:
        self.gets: list[str] = []

    def get(self, url: str, **kwargs: Any) -> _FakeResponse:
        self.gets.append(url)
        return _FakeResponse(json.dumps(MSAL_CONFIG))

    def post(self, url: str, **kwargs: Any) -> _FakeResponse:
        raise AssertionError(f"MSAL tried to POST to {url}")

    def close(self) -> None:
        pass


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def msal_app(n: int) -> tuple[Any, list[dict[str, Any]], FakeHttp]:
    """A PublicClientApplication whose cache holds a valid access token for n accounts."""
    import msal

    http = FakeHttp()
    cache = msal.SerializableTokenCache()
    app = msal.PublicClientApplication(
        CLIENT_ID,
        authority=MSAL_AUTHORITY,
        http_client=http,
        instance_discovery=False,
        validate_authority=False,
        token_cache=cache,
    )
    now = int(time.time())
    for i in range(n):
        uid = f"user-{i:06d}"
        claims = {
            "iss": MSAL_CONFIG["issuer"],
            "sub": uid,
            "oid": uid,
            "tid": "tenant-x",
            "aud": CLIENT_ID,
            "preferred_username": f"{uid}@example.test",
            "iat": now,
            "exp": now + 3600,
        }
        cache.add(
            {
                "client_id": CLIENT_ID,
                "scope": MSAL_SCOPES,
                "token_endpoint": MSAL_CONFIG["token_endpoint"],
                "environment": "login.example.test",
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "data": {},
                "response": {
                    "access_token": f"at-{i}",
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "refresh_token": f"rt-{i}",
                    "id_token": f"{_b64({'alg': 'none'})}.{_b64(claims)}.sig",
                    "client_info": _b64({"uid": uid, "utid": "tenant-x"}),
                },
            }
        )
    accounts = app.get_accounts()
    if len(accounts) != n:
        raise RuntimeError(f"MSAL sees {len(accounts)} accounts, not {n}")
    return app, accounts, http


async def bench_msal(sizes: Sequence[int], calls: int) -> None:
    print("(c) peer: MSAL acquire_token_silent vs get_token, cached tokens, ns per call\n")
    rows = []
    for n in sizes:
        app, msal_accounts, http = msal_app(n)
        by_name = {a["home_account_id"]: a for a in msal_accounts}
        names = sorted(by_name)

        def silent(name: str, app: Any = app, by_name: dict[str, Any] = by_name) -> Any:
            return app.acquire_token_silent(MSAL_SCOPES, by_name[name])

        for name in names[:: max(1, n // 50)]:
            result = silent(name)
            if not result or result.get("token_source") != "cache":
                raise RuntimeError(f"MSAL did not answer from its cache: {result!r}")
        client = await seeded_client(names)
        # The same account names for both; by_name's dict lookup is part of MSAL's side.
        ns = await latencies(
            {"get_token": client.get_token}, {"msal": silent}, batches(names, calls, seed=n)
        )
        await client.aclose()
        if http.gets != [MSAL_AUTHORITY + "/v2.0/.well-known/openid-configuration"]:
            raise RuntimeError(f"MSAL made unexpected requests: {http.gets}")
        df_ns, msal_ns = median(ns["get_token"]), median(ns["msal"])
        rows.append(
            [
                f"{n:,}",
                f"{df_ns:.0f}",
                f"{msal_ns:.0f}",
                f"{ratio(ns['msal'], ns['get_token']):.1f}x",
            ]
        )
    print(
        table(
            ["accounts", "get_token ns", "acquire_token_silent ns", "MSAL / get_token"],
            rows,
        )
    )


async def main_async(args: argparse.Namespace) -> None:
    print(f"bench_get_token: {machine()}\n")
    await bench_cached(args.accounts, calls=args.calls)
    print()
    await bench_refresh(args.refresh, rounds=args.rounds)
    print()
    await bench_msal((1000, 10_000), calls=args.msal_calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000, help="(a) accounts")
    parser.add_argument("--calls", type=int, default=300_000, help="(a) calls per contender")
    parser.add_argument("--refresh", type=int, default=1000, help="(b) expired accounts")
    parser.add_argument("--rounds", type=int, default=7, help="(b) rounds")
    parser.add_argument("--msal-calls", type=int, default=20_000, help="(c) calls per contender")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
