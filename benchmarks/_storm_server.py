"""The built-in server in its own process for bench_storm.py, driven by lines on stdin.

Commands (one per line), each answered by one JSON line on stdout:

- ``issue N``: N grants issued at once (``[[access_token, refresh_token, expires_in], ...]``);
- ``busy SECONDS RETRY_AFTER``: from now on, for SECONDS, answer every token request with 429
  and ``Retry-After: RETRY_AFTER`` (``{}``);
- ``report``: every token request so far, ``[[at, status, refresh_token], ...]`` with ``at``
  on time.monotonic() (one clock for every process of the machine);
- ``quit``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from deviceflow.testing import AuthorizationServer, Fault

CLIENT_ID = "storm"


async def serve(lifetime: int) -> None:
    async with AuthorizationServer(access_token_lifetime=lifetime) as server:
        print(server.issuer, flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().split():
            command, *args = line
            if command == "issue":
                grants = [server.issue_tokens(CLIENT_ID) for _ in range(int(args[0]))]
                answer: object = [
                    [g["access_token"], g["refresh_token"], g["expires_in"]] for g in grants
                ]
            elif command == "busy":
                seconds, retry_after = float(args[0]), int(args[1])
                server.faults.add(
                    Fault(endpoint="token", status=429, retry_after=retry_after, times=None)
                )
                loop.call_later(seconds, server.faults.clear)
                answer = {}
            elif command == "report":
                answer = [
                    [r.at, r.status, r.form.get("refresh_token")]
                    for r in server.requests
                    if r.endpoint == "token"
                ]
            else:
                return
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
