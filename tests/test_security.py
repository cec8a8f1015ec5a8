"""Security checks: every /v1 route refuses a missing or wrong key, secrets and prompts stay out of the logs,
the embedded nats-server listens on loopback only, and request bodies are size-limited."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
from nats.aio.client import Client

from modelbus.config import AuthSettings, Config, HttpSettings, RuntimeSettings
from modelbus.ingress.server import IngressServer
from modelbus.runtime.embedded_nats import EmbeddedNats
from tests.ingress_helpers import QWEN, eventually, put_view, running_ingress, views_bucket
from tests.support.processes import ServiceProcess, modelbus_argv, wait_http_ok
from tests.support.stack import FAST_RUNTIME
from tests.support.upstream import Behaviour, UpstreamServer

KEYS = ("sec-key-alpha-7f3e9c1b", "sec-key-bravo-2d8a4e6f")
PROBES = {"/health", "/v1/ready"}


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.request.url, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "code", "param"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def _operations(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (method, concrete path) the OpenAPI document lists, path parameters filled in."""
    found = []
    for path, item in schema["paths"].items():
        for method in item:
            if method in {"get", "post", "put", "patch", "delete"}:
                found.append((method.upper(), path.replace("{model_id}", QWEN.id)))
    return found


def _minimal_body(path: str) -> dict[str, Any] | None:
    if path == "/v1/chat/completions":
        return {"model": QWEN.id, "messages": [{"role": "user", "content": "hi"}]}
    if path == "/v1/nsql":
        return {"query": "how many rows?"}
    if path in ("/v1/responses", "/v1/embeddings"):
        return {"model": QWEN.id, "input": "hi"}
    return None


async def test_every_v1_route_refuses_a_missing_or_wrong_key(nc: Client) -> None:
    await put_view(await views_bucket(nc), QWEN)
    async with running_ingress(nc, *KEYS) as ingress:
        http = ingress.http
        schema_response = await http.get("/schema/openapi.json", headers={"X-API-Key": KEYS[0]})
        assert schema_response.status_code == 200
        operations = _operations(schema_response.json())
        v1 = [(m, p) for m, p in operations if p.startswith("/v1/") and p not in PROBES]
        # the document lists every route the app serves (a new one cannot be forgotten here)
        assert {p for _, p in v1} >= {
            "/v1/models",
            f"/v1/models/{QWEN.id}",
            "/v1/chat/completions",
            "/v1/nsql",
            "/v1/responses",
            "/v1/responses/{response_id}",
            "/v1/embeddings",
        }
        guarded = [*v1, ("GET", "/schema/openapi.json")]
        wrong_forms: list[dict[str, str]] = [
            {},
            {"X-API-Key": "sec-key-wrong-00000000"},
            {"Authorization": "Bearer sec-key-wrong-00000000"},
            {"Authorization": f"Basic {KEYS[0]}"},
            {"X-API-Key": ""},
        ]
        for method, path in guarded:
            body = _minimal_body(path)
            for headers in wrong_forms:
                response = await http.request(method, path, json=body, headers=headers)
                error = _error(response, 401)
                assert error["code"] == "invalid_api_key", (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
            for headers in ({"X-API-Key": KEYS[0]}, {"Authorization": f"Bearer {KEYS[1]}"}):
                # past auth: a GET is answered, an empty POST body is refused by validation (no worker),
                # and a response id that was never stored is not found
                response = await http.request(method, path, json={} if body else None, headers=headers)
                expected = 400 if body else 404 if path.startswith("/v1/responses/") else 200
                assert response.status_code == expected, (method, path, headers, response.text)
        for path in sorted(PROBES):
            assert (await http.get(path)).status_code == 200
            assert (await http.get(path, headers={"X-API-Key": "sec-key-wrong-00000000"})).status_code == 200


def _max_body_config(limit: int) -> Config:
    return Config(
        runtime=RuntimeSettings(
            http=HttpSettings(host="127.0.0.1", port=0, max_body_bytes=limit),
            auth=AuthSettings(api_keys=KEYS),
            shutdown_grace=2.0,
        )
    )


async def test_oversized_bodies_get_413_and_the_ingress_keeps_serving(nc: Client) -> None:
    await put_view(await views_bucket(nc), QWEN)
    limit = 64 * 1024
    auth = {"X-API-Key": KEYS[0], "content-type": "application/json"}
    async with (
        IngressServer(_max_body_config(limit), nc) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        schema = (await http.get("/schema/openapi.json", headers=auth)).json()
        posts = [p for m, p in _operations(schema) if m == "POST"]
        assert set(posts) == {"/v1/chat/completions", "/v1/nsql", "/v1/responses", "/v1/embeddings"}
        filler = "x" * (limit + 1)
        for path in posts:
            body = msgspec.json.encode({**(_minimal_body(path) or {}), "padding": filler})
            assert len(body) > limit
            _error(await http.post(path, content=body, headers=auth), 413)

            async def chunked(data: bytes = body) -> Any:  # no Content-Length: the limit still holds
                for i in range(0, len(data), 8192):
                    yield data[i : i + 8192]

            _error(await http.post(path, content=chunked(), headers=auth), 413)
            # a declared length over the limit is refused before the body is sent
            assert await _declared_only(server.port, path, limit * 1000) == 413
        # still serving, and a body under the limit still gets through the size check
        assert (await http.get("/health")).status_code == 200
        models = await eventually(lambda: _listed(http, auth))
        assert QWEN.id in models
        small = {"model": "no-such-model", "messages": [{"role": "user", "content": "x" * (limit // 2)}]}
        _error(await http.post("/v1/chat/completions", json=small, headers=auth), 404)


async def _declared_only(port: int, path: str, length: int) -> int:
    """Send only the head of a POST declaring ``length`` bytes; the status the server answers with."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEYS[0]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )
        with anyio.fail_after(10):
            head = await stream.receive()
    return int(head.split(b" ", 2)[1])


async def _listed(http: httpx.AsyncClient, headers: dict[str, str]) -> list[str] | None:
    response = await http.get("/v1/models", headers=headers)
    return [m["id"] for m in response.json()["data"]] if response.status_code == 200 else None


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process ``pid`` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(hex_port, 16)))
    return found


async def test_embedded_nats_listens_on_loopback_only(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "nats") as server:
        assert server._proc is not None
        listening = _listening(server._proc.pid)
        assert server.port in {port for _, port in listening}, listening
        for address, _ in listening:
            assert ipaddress.ip_address(address).is_loopback, listening
        # and nothing answers on this machine's other addresses
        for address in _own_addresses():
            with socket.socket() as probe:
                probe.settimeout(2)
                assert probe.connect_ex((address, server.port)) != 0, address


def _own_addresses() -> set[str]:
    """This machine's non-loopback IPv4 addresses that can be found without privileges (maybe none)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        found |= {str(i[4][0]) for i in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect(("10.255.255.255", 9))  # no packet is sent: this only picks the outgoing address
            found.add(str(udp.getsockname()[0]))
        except OSError:
            pass
    return {a for a in found if not ipaddress.ip_address(a).is_loopback and a != "0.0.0.0"}


SECRET_KEY = "sec-client-key-QZ7XK2M9"
UPSTREAM_KEY = "sk-upstream-secret-VB4NW8R1"
PROMPT = "the-private-prompt-JH5TG3LP"
QUESTION = "the private question PF6DS2KY"
TOP5 = (
    "SELECT customer_id, customer_name, sum(total) AS total_sales FROM sales_data "
    "GROUP BY customer_id, customer_name ORDER BY total_sales DESC LIMIT 5"
)


async def test_keys_and_prompts_never_reach_the_logs(tmp_path: Path) -> None:
    http_port = _free_port()
    async with (
        EmbeddedNats(tmp_path / "nats") as nats_server,
        UpstreamServer() as upstream,
    ):
        upstream.upstream.behaviour = Behaviour(api_key=UPSTREAM_KEY)
        config = tmp_path / "modelbus.yaml"
        config.write_text(
            FAST_RUNTIME + f"  http: {{port: {http_port}}}\n  state_dir: state\n  log_level: debug\n"
            f"  auth: {{api_keys: ['{SECRET_KEY}']}}\n"
            "models:\n  - name: gpt-4.1\n    from: openai:gpt-4.1\n    datasets: [sales_data]\n"
            f"    params: {{endpoint: '{upstream.url}', api_key: '{UPSTREAM_KEY}', recheck_initial: 0.05, "
            "recheck_max: 0.2}\n"
            "datasets:\n  - name: sales_data\n    from: sample:sales_data\n    params: {rows: '2000'}\n"
        )
        common = ("--config", str(config), "--nats-url", nats_server.url)
        logs = tmp_path / "logs"
        logs.mkdir()
        processes = [
            ServiceProcess(modelbus_argv("registry", *common), logs / "registry.log"),
            ServiceProcess(modelbus_argv("worker", "model", *common), logs / "model-worker.log"),
            ServiceProcess(modelbus_argv("worker", "nsql", *common), logs / "nsql-worker.log"),
            ServiceProcess(modelbus_argv("ingress", *common), logs / "ingress.log"),
        ]
        try:
            base = f"http://127.0.0.1:{http_port}"
            await wait_http_ok(f"{base}/health")
            auth = {"Authorization": f"Bearer {SECRET_KEY}"}
            async with httpx.AsyncClient(base_url=base, timeout=30, headers=auth) as http:
                await _wait_ready(http)
                chat = {"model": "gpt-4.1", "messages": [{"role": "user", "content": PROMPT}]}
                assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
                streamed = await http.post("/v1/chat/completions", json={**chat, "stream": True})
                assert streamed.status_code == 200 and "[DONE]" in streamed.text
                # failures: a wrong key, a malformed body, an unknown model, an upstream 401
                wrong = {"X-API-Key": SECRET_KEY + "-wrong", "Authorization": f"Bearer {PROMPT}"}
                assert (await http.post("/v1/chat/completions", json=chat, headers=wrong)).status_code == 401
                malformed = b'{"model": "gpt-4.1", "messages": [{"content": "' + PROMPT.encode() + b'"'
                bad = await http.post(
                    "/v1/chat/completions", content=malformed, headers={"content-type": "application/json"}
                )
                assert bad.status_code == 400
                bad_shape = {"model": "gpt-4.1", "messages": PROMPT}
                assert (await http.post("/v1/chat/completions", json=bad_shape)).status_code == 400
                unknown = {**chat, "model": f"no-such-{PROMPT}"}
                assert (await http.post("/v1/chat/completions", json=unknown)).status_code == 404
                upstream.upstream.behaviour = Behaviour(
                    api_key=UPSTREAM_KEY, fail_status=401, fail_message=f"Incorrect API key {UPSTREAM_KEY}"
                )
                failed = await http.post("/v1/chat/completions", json=chat)
                assert failed.status_code >= 400, failed.text
                assert (
                    UPSTREAM_KEY not in failed.text
                )  # an upstream that echoes the key: masked for clients too
                listing = await http.get("/v1/models", params={"status": "true"})
                assert UPSTREAM_KEY not in listing.text
                upstream.upstream.behaviour = Behaviour(
                    api_key=UPSTREAM_KEY, reply=msgspec.json.encode({"sql": TOP5}).decode()
                )
                await _wait_ready(http)

                async def answered() -> bool:
                    response = await http.post(
                        "/v1/nsql", json={"query": QUESTION, "datasets": ["sales_data"]}
                    )
                    return response.status_code == 200

                await eventually(answered, timeout=60)
                upstream.upstream.behaviour = Behaviour(api_key=UPSTREAM_KEY, reply="not sql at all")
                await http.post("/v1/nsql", json={"query": QUESTION + " again", "datasets": ["sales_data"]})
                await http.post("/v1/nsql", json={"query": QUESTION, "datasets": ["no_such_dataset"]})
            assert any(seen.body["messages"][0]["content"] == PROMPT for seen in upstream.upstream.requests)
        finally:
            for process in reversed(processes):
                process.terminate()
    captured = {path.name: path.read_text(errors="replace") for path in logs.iterdir()}
    captured["nats-server.log"] = (tmp_path / "nats" / "nats-server.log").read_text(errors="replace")
    assert "nsql.request" in captured["nsql-worker.log"]  # the logs did record the requests
    assert "http.request" in captured["ingress.log"]
    for name, text in captured.items():
        for secret in (SECRET_KEY, UPSTREAM_KEY, PROMPT, QUESTION, "PF6DS2KY"):
            assert secret not in text, f"{secret!r} in {name}:\n" + "\n".join(
                line for line in text.splitlines() if secret in line
            )


async def _wait_ready(http: httpx.AsyncClient) -> None:
    with anyio.fail_after(60):
        while True:
            response = await http.get("/v1/models/gpt-4.1", params={"status": "true"})
            if response.status_code == 200 and response.json().get("status") == "ready":
                return
            await anyio.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
