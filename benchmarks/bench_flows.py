"""1,000 concurrent device flows: deviceflow beside a bare aiohttp loop, same run (issue 2).

The test server runs in its own process (``python -m deviceflow.testing --interval 1
--auto-approve 1``): every code is answered ``authorization_pending`` on its first poll and
approved, so each flow is device authorization POST, wait, token POST (pending), wait, token POST
(granted). Both sides use one aiohttp session with the same connector limit, and the bare loop
waits ``interval + poll_margin`` like deviceflow does, so wall times are comparable too.

Printed per contender: median wall time for the 1,000 flows and median client CPU per flow
(``time.process_time``: this process only, the server's CPU is printed apart), and the ratio to
the bare loop. Target (issue 2): deviceflow's CPU per flow within 1.5x of the bare loop.

Run: ``python benchmarks/bench_flows.py [--flows N] [--rounds R]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import attrs

from _harness import ServerProcess, machine, median, server_process, table
from deviceflow import DeviceCode, DeviceFlowClient, FlowState, Provider

CLIENT_ID = "bench"
SCOPE = "openid offline_access"
LIMIT = 100  # connections per session, both sides
POLL_MARGIN = 0.1  # deviceflow's default poll_margin, used by the bare loop as well
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TARGET_CPU_RATIO = 1.5

Contender = Callable[[ServerProcess, int], Coroutine[Any, Any, int]]


@attrs.frozen
class Sample:
    wall: float  # seconds for all flows
    cpu: float  # client CPU seconds for all flows
    server_cpu: float


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=LIMIT))


# --- the bare loop --------------------------------------------------------------------------


async def bare_flow(session: aiohttp.ClientSession, server: ServerProcess) -> dict[str, Any]:
    """The least a correct RFC 8628 client does: request a code, poll at the interval."""
    headers = {"Accept": "application/json"}
    async with session.post(
        server.device_authorization_endpoint,
        data={"client_id": CLIENT_ID, "scope": SCOPE},
        headers=headers,
    ) as resp:
        code: dict[str, Any] = json.loads(await resp.read())
    interval = float(code.get("interval") or 5)
    form = {"grant_type": DEVICE_CODE_GRANT, "device_code": code["device_code"]}
    form["client_id"] = CLIENT_ID
    while True:
        await asyncio.sleep(interval + POLL_MARGIN)
        async with session.post(server.token_endpoint, data=form, headers=headers) as resp:
            body: dict[str, Any] = json.loads(await resp.read())
        if "access_token" in body:
            return body
        error = body.get("error")
        if error == "slow_down":
            interval += 5
        elif error != "authorization_pending":
            raise RuntimeError(f"bare flow failed: {error}")


async def run_bare(server: ServerProcess, flows: int) -> int:
    async with new_session() as session:
        results = await asyncio.gather(*(bare_flow(session, server) for _ in range(flows)))
    return sum(1 for r in results if r.get("access_token"))


# --- deviceflow -----------------------------------------------------------------------------


def provider_for(server: ServerProcess) -> Provider:
    return Provider(
        issuer=server.issuer,
        device_authorization_endpoint=server.device_authorization_endpoint,
        token_endpoint=server.token_endpoint,
        revocation_endpoint=server.revocation_endpoint,
    )


def show_code(code: DeviceCode, account: str) -> None:
    """A service would send the code to a person; the server approves by itself here."""


async def run_get_token(server: ServerProcess, flows: int) -> int:
    async with (
        new_session() as session,
        DeviceFlowClient(
            provider_for(server),
            client_id=CLIENT_ID,
            scope=SCOPE,
            on_code=show_code,
            session=session,
            poll_margin=POLL_MARGIN,
        ) as client,
    ):
        tokens = await asyncio.gather(*(client.get_token(f"acct-{i}") for i in range(flows)))
    return sum(1 for t in tokens if t.access_token)


async def run_authorize(server: ServerProcess, flows: int) -> int:
    async def one(client: DeviceFlowClient, account: str) -> bool:
        state = None
        async for event in client.authorize(account):
            state = event.state
        return state is FlowState.GRANTED

    async with (
        new_session() as session,
        DeviceFlowClient(
            provider_for(server),
            client_id=CLIENT_ID,
            scope=SCOPE,
            session=session,
            poll_margin=POLL_MARGIN,
        ) as client,
    ):
        granted = await asyncio.gather(*(one(client, f"acct-{i}") for i in range(flows)))
    return sum(granted)


CONTENDERS: dict[str, Contender] = {
    "bare aiohttp loop": run_bare,
    "deviceflow get_token": run_get_token,
    "deviceflow authorize": run_authorize,
}


def measure(contender: Contender, server: ServerProcess, flows: int) -> Sample:
    gc.collect()
    server_cpu = server.cpu()
    cpu = time.process_time()
    wall = time.perf_counter()
    done = asyncio.run(contender(server, flows))
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    server_cpu = server.cpu() - server_cpu
    if done != flows:
        raise RuntimeError(f"only {done} of {flows} flows got a token")
    return Sample(wall=wall, cpu=cpu, server_cpu=server_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    flows: int = args.flows

    print(f"bench_flows: {flows} concurrent device flows, interval 1 s, approval after poll 1")
    print(f"machine: {machine()}; connector limit {LIMIT}; {args.rounds} rounds, medians\n")
    samples: dict[str, list[Sample]] = {name: [] for name in CONTENDERS}
    names = list(CONTENDERS)
    with server_process("--interval", "1", "--auto-approve", "1") as server:
        asyncio.run(run_bare(server, 10))  # warm-up: imports, first connections
        asyncio.run(run_get_token(server, 10))
        for r in range(args.rounds):
            # Rotate the order so no contender always runs first (or last) in a round.
            for name in names[r % len(names) :] + names[: r % len(names)]:
                s = measure(CONTENDERS[name], server, flows)
                samples[name].append(s)
                print(
                    f"  round {r + 1} {name:<22} wall {s.wall:6.3f} s  "
                    f"cpu/flow {s.cpu / flows * 1e3:6.3f} ms  "
                    f"server cpu {s.server_cpu:5.2f} s",
                    flush=True,
                )

    base_wall = median([s.wall for s in samples[names[0]]])
    base_cpu = median([s.cpu / flows for s in samples[names[0]]])
    rows = []
    for name in names:
        wall = median([s.wall for s in samples[name]])
        cpu = median([s.cpu / flows for s in samples[name]])
        # Ratio of medians, and the median of the per-round ratios (same-round pairs).
        per_round = median(
            [s.cpu / b.cpu for s, b in zip(samples[name], samples[names[0]], strict=True)]
        )
        server_cpu = median([s.server_cpu / flows for s in samples[name]])
        rows.append(
            [
                name,
                f"{wall:.3f}",
                f"{wall / base_wall:.2f}x",
                f"{cpu * 1e3:.3f}",
                f"{cpu / base_cpu:.2f}x",
                f"{per_round:.2f}x",
                f"{server_cpu * 1e3:.3f}",
            ]
        )
    print()
    print(
        table(
            [
                "contender",
                "wall s",
                "wall ratio",
                "client cpu/flow ms",
                "cpu ratio",
                "cpu ratio (per round)",
                "server cpu/flow ms",
            ],
            rows,
        )
    )
    for name in names[1:]:
        ratio = median([s.cpu / flows for s in samples[name]]) / base_cpu
        verdict = "met" if ratio <= TARGET_CPU_RATIO else "MISSED"
        print(f"\n{name}: CPU per flow {ratio:.2f}x the bare loop (target <= 1.5x): {verdict}")


if __name__ == "__main__":
    main()
