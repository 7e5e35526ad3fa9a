"""``deviceflow token --format exec-credential``: kubectl's exec credential plugin, checked
against the ExecCredential schema and, where kubectl is installed, run by a real kubectl."""

from __future__ import annotations

import base64
import datetime
import http.server
import io
import json
import re
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Cli, ServerThread, login_approved
from howto_pages import DOCS, commands, fenced, run_shell, shim, substitute

from deviceflow import Token
from deviceflow._cli._errors import CliError
from deviceflow._cli._kube import ExecInfo, exec_credential, read_exec_info
from helpers import self_signed_context, time_factor

V1 = "client.authentication.k8s.io/v1"
V1BETA1 = "client.authentication.k8s.io/v1beta1"

# The ExecCredential of client.authentication.k8s.io/v1 as the Kubernetes API reference
# describes it (kubernetes.io/docs/reference/config-api/client-authentication.v1/), in JSON
# Schema form: the fields and types kubectl decodes.
RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"
EXEC_CREDENTIAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind"],
    "properties": {
        "apiVersion": {"type": "string", "enum": [V1, V1BETA1]},
        "kind": {"type": "string", "enum": ["ExecCredential"]},
        "spec": {
            "type": "object",
            "properties": {"interactive": {"type": "boolean"}, "cluster": {"type": "object"}},
        },
        "status": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "expirationTimestamp": {"type": "string", "pattern": RFC3339},
                "token": {"type": "string"},
                "clientCertificateData": {"type": "string"},
                "clientKeyData": {"type": "string"},
            },
        },
    },
}
_TYPES: dict[str, type[Any]] = {"object": dict, "string": str, "boolean": bool}


def check(instance: Any, schema: Mapping[str, Any], where: str = "$") -> None:
    """Validate ``instance`` against the subset of JSON Schema used above."""
    expected: type[Any] = _TYPES[schema["type"]]
    assert isinstance(instance, expected), f"{where}: not a {schema['type']}"
    if "enum" in schema:
        assert instance in schema["enum"], f"{where}: {instance!r} not in {schema['enum']}"
    if "pattern" in schema:
        assert re.match(schema["pattern"], instance), f"{where}: {instance!r} is not RFC 3339"
    if expected is dict:
        for name in schema.get("required", []):
            assert name in instance, f"{where}: {name} is missing"
        properties = schema.get("properties", {})
        for name, value in instance.items():
            if name in properties:
                check(value, properties[name], f"{where}.{name}")
            else:
                assert schema.get("additionalProperties", True), f"{where}: unknown {name}"


def check_as_kubectl(credential: Any, asked: str) -> None:
    """The schema, and what client-go's exec authenticator requires on top of it: the version
    it asked for, a status, and a token (or a client certificate and key)."""
    check(credential, EXEC_CREDENTIAL_SCHEMA)
    assert asked == credential["apiVersion"]
    status = credential["status"]
    assert status.get("token") or (status.get("clientCertificateData") and status["clientKeyData"])


def exec_info(interactive: bool, version: str = V1) -> str:
    return json.dumps(
        {"apiVersion": version, "kind": "ExecCredential", "spec": {"interactive": interactive}}
    )


def test_exec_credential_passes_the_schema(cli: Cli, server: ServerThread) -> None:
    """The printed ExecCredential passes the schema, carries a valid token and its expiry in
    RFC 3339 UTC with Z, and stdout holds nothing else."""
    assert 0 == login_approved(cli, server, *cli.server_args()).returncode
    result = cli.run(
        "token",
        "--format",
        "exec-credential",
        *cli.server_args(),
        env={"KUBERNETES_EXEC_INFO": exec_info(interactive=False)},
    )
    assert 0 == result.returncode, result.stderr
    credential = json.loads(result.stdout)
    check_as_kubectl(credential, V1)
    assert server.is_valid(credential["status"]["token"])
    expiry = credential["status"]["expirationTimestamp"]
    assert expiry.endswith("Z")
    as_json = json.loads(cli.run("token", "--format", "json", *cli.server_args()).stdout)
    assert as_json["expires_at"].startswith(expiry[:-1])


def test_answers_in_the_version_kubectl_asks(cli: Cli, server: ServerThread) -> None:
    """kubectl configured with v1beta1 gets a v1beta1 ExecCredential."""
    assert 0 == login_approved(cli, server, *cli.server_args()).returncode
    info = exec_info(interactive=False, version=V1BETA1)
    result = cli.run(
        "token", "--format", "exec-credential", *cli.server_args(),
        env={"KUBERNETES_EXEC_INFO": info},
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr
    check_as_kubectl(json.loads(result.stdout), V1BETA1)


def test_not_interactive_never_prompts(cli: Cli, server: ServerThread) -> None:
    """spec.interactive false and no token: exit 6, a message that says to sign in, nothing on
    stdout, no device code asked for."""
    result = cli.run(
        "token", "--format", "exec-credential", *cli.server_args(),
        env={"KUBERNETES_EXEC_INFO": exec_info(interactive=False)},
    )  # fmt: skip
    assert (6, "") == (result.returncode, result.stdout)
    assert "spec.interactive is false" in result.stderr
    assert "deviceflow login" in result.stderr
    assert [] == server.requests("device")


def test_interactive_signs_in_with_the_code_on_stderr(cli: Cli, server: ServerThread) -> None:
    """spec.interactive true and no token: a device flow whose code goes to stderr; stdout
    holds the ExecCredential only, and the account is listed by status afterwards."""
    running = cli.popen(
        "token", "--format", "exec-credential", *cli.server_args(), "--account", "k8s",
        env={"KUBERNETES_EXEC_INFO": exec_info(interactive=True)},
    )  # fmt: skip
    code = server.wait_for_code()
    server.approve(code)
    stdout, stderr = running.communicate(timeout=30 * time_factor())
    assert 0 == running.returncode, stderr
    assert code in stderr
    check_as_kubectl(json.loads(stdout), V1)
    assert "k8s" in cli.run("status").stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"kind": "Pod"}', "is not an ExecCredential"),
        ('{"kind": "ExecCredential", "apiVersion": "v2"}', "asks for apiVersion 'v2'"),
    ],
)
def test_bad_exec_info_is_a_usage_error(text: str, message: str) -> None:
    """A KUBERNETES_EXEC_INFO that is not an ExecCredential of a known version: exit code 2."""
    with pytest.raises(CliError, match=message) as caught:
        read_exec_info({"KUBERNETES_EXEC_INFO": text}, io.StringIO())
    assert 2 == caught.value.code


def test_exec_info_defaults() -> None:
    """Without KUBERNETES_EXEC_INFO, v1 and interactive only on a terminal; a missing
    spec.interactive means not interactive."""
    assert ExecInfo(api_version=V1, interactive=False) == read_exec_info({}, io.StringIO())
    closed = io.StringIO()
    closed.close()  # isatty() raises on a closed stream: not a terminal
    assert ExecInfo(api_version=V1, interactive=False) == read_exec_info({}, closed)
    assert ExecInfo(api_version=V1, interactive=False) == read_exec_info(
        {"KUBERNETES_EXEC_INFO": json.dumps({"apiVersion": V1, "kind": "ExecCredential"})},
        io.StringIO(),
    )


def test_token_without_expiry_has_no_timestamp() -> None:
    """A token that never expires gets no expirationTimestamp (kubectl keeps it until a 401);
    an aware expiry in another zone is written in UTC."""
    assert {"token": "t"} == exec_credential(Token(access_token="t"))["status"]
    cet = datetime.timezone(datetime.timedelta(hours=1))
    token = Token(access_token="t", expires_at=datetime.datetime(2030, 1, 1, 1, 0, tzinfo=cet))
    credential = exec_credential(token)
    check_as_kubectl(credential, V1)
    assert "2030-01-01T00:00:00Z" == credential["status"]["expirationTimestamp"]


# --- a real kubectl, against a TLS API server that checks tokens with the test server ------------


class ApiServer:
    """An https "Kubernetes API" on loopback: /version for a valid bearer token, else 401."""

    def __init__(self, folder: Path, valid: Any) -> None:
        context = self_signed_context(folder)
        self.ca_data = base64.b64encode((folder / "cert.pem").read_bytes()).decode()
        self.seen: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                header = self.headers.get("Authorization")
                outer.seen.append(header)
                token = (header or "").removeprefix("Bearer ")
                if not header or not valid(token):
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"major": "1", "minor": "32", "gitVersion": "v1.32.0"})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        limit = 10 * time_factor()

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request: Any, client_address: Any) -> None:
                # The TLS handshake in the connection's thread, with a deadline: done on the
                # listening socket, it ran in serve_forever's thread, where a client that never
                # finished it stopped every later request, and shutdown() waited for ever.
                request.settimeout(limit)
                with context.wrap_socket(request, server_side=True) as tls:
                    super().finish_request(tls, client_address)

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"https://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10 * time_factor())
        assert not self._thread.is_alive(), "the API server's thread did not stop"


@pytest.fixture
def api(tmp_path: Path, server: ServerThread) -> Iterator[ApiServer]:
    running = ApiServer(tmp_path, server.is_valid)
    yield running
    running.close()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl")
def test_howto_kubectl_commands_run(cli: Cli, server: ServerThread, api: ApiServer) -> None:
    """docs/howto/kubectl.md, as a reader follows it: its profile and kubeconfig, then each of
    its commands, with a real kubectl that sends the plugin's token to a TLS API server."""
    page = DOCS / "howto" / "kubectl.md"
    profile = substitute(
        fenced(page, "toml")[0], {"https://sso.example.com/realms/ops": server.issuer}
    )
    profiles = cli.home / "config" / "deviceflow" / "profiles.toml"
    profiles.parent.mkdir(parents=True)
    profiles.write_text(profile, encoding="utf-8")
    kubeconfig = substitute(
        fenced(page, "yaml")[0],
        {"https://k8s.example.com:6443": api.url, "CLUSTER-CA-BASE64": api.ca_data},
    )
    (cli.home / ".kube").mkdir()
    (cli.home / ".kube" / "config").write_text(kubeconfig, encoding="utf-8")
    env = {"PATH": shim(cli), "KUBECONFIG": str(cli.home / ".kube" / "config")}
    results = []
    for step in commands(page):
        if step.startswith("deviceflow login"):
            running = cli.popen(*step.split()[1:], "--no-browser", env=env)
            server.approve(server.wait_for_code())
            _, stderr = running.communicate(timeout=30 * time_factor())
            assert 0 == running.returncode, stderr
            continue
        result = run_shell(cli, step, env)
        assert 0 == result.returncode, (step, result.stderr)
        results.append((step, result.stdout))
    by_kubectl = [out for step, out in results if step.startswith("kubectl get")]
    assert ["v1.32.0"] == [json.loads(out)["gitVersion"] for out in by_kubectl]
    assert api.seen
    assert all(seen and server.is_valid(seen.removeprefix("Bearer ")) for seen in api.seen)
    by_hand = [out for step, out in results if step.startswith("deviceflow token")]
    check_as_kubectl(json.loads(by_hand[0]), V1)
