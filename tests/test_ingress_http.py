"""The ingress as an HTTP service: probes, API keys, request ids, the error shape, OpenAPI, lifecycle."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import httpx
import msgspec
import openai
import pytest
import structlog
import uvicorn
from nats.aio.client import Client

from modelbus.config import ChatSettings
from modelbus.ingress.app import create_app
from modelbus.ingress.server import IngressServer
from modelbus.ingress.view_store import ModelViewStore
from modelbus.runtime.work_queue.client import WorkQueueClient
from modelbus.schemas.chat import CHAT
from modelbus.schemas.status import ModelStatus
from modelbus.schemas.views import ModelView
from tests.ingress_helpers import (
    GPT,
    QWEN,
    eventually,
    ingress_config,
    listed_ids,
    put_view,
    running_ingress,
    views_bucket,
)

KEYS = ("key-one-s3cr3t", "key-two-s3cr3t")


def assert_error_shape(response: httpx.Response, status: int, code: str | None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] == code
    return dict(error)


async def test_health_and_readiness(nc: Client) -> None:
    kv = await views_bucket(nc)
    async with running_ingress(nc) as ingress:
        health = await ingress.http.get("/health")
        assert (health.status_code, health.text) == (200, "ok")
        assert health.headers["content-type"].startswith("text/plain")

        before = await ingress.http.get("/v1/ready")  # no view yet
        assert (before.status_code, before.text) == (503, "not ready")

        loading = ModelView(id="slow", owned_by="local:slow", status=ModelStatus.LOADING)
        await put_view(kv, QWEN)
        await put_view(kv, loading)

        async def both_listed() -> bool:
            return await listed_ids(ingress.http) == ["qwen2.5-coder", "slow"]

        await eventually(both_listed)
        still = await ingress.http.get("/v1/ready")
        assert (still.status_code, still.text) == (503, "not ready")
        verbose = await ingress.http.get("/v1/ready", params={"verbose": "true"})
        assert verbose.status_code == 503
        assert verbose.json() == {
            "ready": False,
            "initialized": True,
            "nats_connected": True,
            "not_ready": [{"id": "slow", "status": "loading"}],
        }

        # ready once, then loading again (a restart of its worker): still counts as ready, as in Spice
        await put_view(kv, msgspec.structs.replace(loading, status=ModelStatus.READY, ever_ready=True))

        async def ready() -> httpx.Response | None:
            response = await ingress.http.get("/v1/ready")
            return response if response.status_code == 200 else None

        assert (await eventually(ready)).text == "ready"
        await put_view(kv, msgspec.structs.replace(loading, status=ModelStatus.LOADING, ever_ready=True))
        await put_view(kv, msgspec.structs.replace(GPT, ever_ready=True))

        async def three_listed() -> bool:
            return len(await listed_ids(ingress.http) or []) == 3

        await eventually(three_listed)
        assert (await ingress.http.get("/v1/ready")).status_code == 200
        assert (await ingress.http.get("/v1/ready?verbose=1")).json()["not_ready"] == []
        bad = await ingress.http.get("/v1/ready", params={"verbose": "perhaps"})
        assert_error_shape(bad, 400, "invalid_value")


async def test_api_keys_guard_everything_but_the_probes(nc: Client) -> None:
    await put_view(await views_bucket(nc), QWEN)
    with structlog.testing.capture_logs() as logs:
        async with running_ingress(nc, *KEYS) as ingress:
            http = ingress.http
            missing = await http.get("/v1/models")
            error = assert_error_shape(missing, 401, "invalid_api_key")
            assert error["type"] == "invalid_request_error"
            assert "X-API-Key" in str(error["message"])
            assert missing.headers["www-authenticate"] == "Bearer"

            for headers in (
                {"X-API-Key": "wrong"},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {KEYS[0]}"},  # the key, but not as a bearer token
                {"X-API-Key": KEYS[0][:-1]},
                {"X-API-Key": KEYS[0] + "x"},
            ):
                wrong = await http.get("/v1/models", headers=headers)
                assert_error_shape(wrong, 401, "invalid_api_key")
                assert wrong.headers["www-authenticate"] == "Bearer"
                assert KEYS[0] not in wrong.text

            async def listed_with_key() -> bool:
                return await listed_ids(http, **{"X-API-Key": KEYS[1]}) == [QWEN.id]

            await eventually(listed_with_key)
            for headers in (
                {"Authorization": f"Bearer {KEYS[0]}"},
                {"authorization": f"bearer {KEYS[1]}"},
                {"X-API-Key": "wrong", "Authorization": f"Bearer {KEYS[0]}"},
            ):
                assert (await http.get("/v1/models/qwen2.5-coder", headers=headers)).status_code == 200

            # the probes are open; everything else, the schema and unknown routes included, is not
            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/v1/ready")).status_code == 200
            assert (await http.get("/v1/ready/")).status_code == 200
            assert (await http.get("/schema/openapi.json")).status_code == 401
            assert (await http.get("/nowhere")).status_code == 401
            assert (await http.get("/nowhere", headers={"X-API-Key": KEYS[0]})).status_code == 404
            schema = (await http.get("/schema/openapi.json", headers={"X-API-Key": KEYS[0]})).json()
            assert set(schema["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
            assert schema["paths"]["/v1/models"]["get"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
            assert "security" not in schema["paths"]["/health"]["get"]
            assert "401" in schema["paths"]["/v1/models"]["get"]["responses"]

            async with openai.AsyncOpenAI(
                base_url=f"{ingress.base_url}/v1", api_key="sk-wrong", max_retries=0
            ) as bad_client:
                with pytest.raises(openai.AuthenticationError) as caught:
                    await bad_client.models.list()
                assert caught.value.code == "invalid_api_key"
            async with openai.AsyncOpenAI(
                base_url=f"{ingress.base_url}/v1", api_key=KEYS[1], max_retries=0
            ) as client:
                assert [m.id for m in (await client.models.list()).data] == [QWEN.id]

    requests = [entry for entry in logs if entry["event"] == "http.request"]
    assert any(e["status"] == 401 for e in requests)
    assert any(e["status"] == 200 and e["path"] == "/v1/models" for e in requests)
    for entry in requests:
        assert {"method", "path", "status", "duration_ms", "request_id"} <= set(entry)
    for key in KEYS:
        assert key not in repr(logs)


async def test_without_keys_every_route_is_open(nc: Client) -> None:
    await put_view(await views_bucket(nc), QWEN)
    async with running_ingress(nc) as ingress:

        async def listed() -> bool:
            return await listed_ids(ingress.http, Authorization="Bearer anything") == [QWEN.id]

        await eventually(listed)
        schema = (await ingress.http.get("/schema/openapi.json")).json()
        assert "securitySchemes" not in schema.get("components", {})
        assert "security" not in schema["paths"]["/v1/models"]["get"]


async def test_request_id_on_every_response(nc: Client) -> None:
    async with running_ingress(nc, *KEYS) as ingress:
        http = ingress.http
        auth = {"X-API-Key": KEYS[0]}
        responses = {
            "401": await http.get("/v1/models"),
            "500 not initialized": await http.get("/v1/models", headers=auth),
            "404 route": await http.get("/no/such/route", headers=auth),
            "405": await http.post("/v1/models", headers=auth),
            "400": await http.get("/v1/models?format=yaml", headers=auth),
            "200": await http.get("/health"),
            "503": await http.get("/v1/ready"),
        }
        ids = set()
        for name, response in responses.items():
            request_id = response.headers.get("x-request-id", "")
            assert len(request_id) == 32 and int(request_id, 16) >= 0, name
            ids.add(request_id)
        assert len(ids) == len(responses)

        echoed = await http.get("/health", headers={"X-Request-Id": "trace-42.a:b"})
        assert echoed.headers["x-request-id"] == "trace-42.a:b"
        for insane in ("has space", "x" * 200, "-leading-dash", "ünïcode"):
            replaced = await http.get("/health", headers=[(b"x-request-id", insane.encode())])
            assert replaced.headers["x-request-id"] not in (insane, "")
            assert len(replaced.headers["x-request-id"]) == 32


async def test_unknown_routes_and_methods_answer_in_the_error_shape(nc: Client) -> None:
    async with running_ingress(nc) as ingress:
        http = ingress.http
        not_found = assert_error_shape(await http.get("/v2/everything"), 404, "not_found")
        assert "/v2/everything" in str(not_found["message"])
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            response = await http.request(method, "/v1/models")
            assert_error_shape(response, 405, "method_not_allowed")
            assert "GET" in response.headers["allow"]
        assert_error_shape(await http.delete("/health"), 405, "method_not_allowed")


class _BrokenViews(ModelViewStore):
    """A store whose reads fail, to reach the handler for unexpected exceptions."""

    @property
    def initialized(self) -> bool:
        return True

    def views(self) -> tuple[ModelView, ...]:
        raise RuntimeError("boom")


@asynccontextmanager
async def serve_app(app: uvicorn.Config) -> AsyncIterator[str]:
    server = uvicorn.Server(app)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


async def test_unexpected_exception_is_a_json_500_without_secrets(nc: Client) -> None:
    app = create_app(ingress_config(), _BrokenViews(nc), WorkQueueClient(nc, {CHAT: ChatSettings()}))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None, ws="none")
    with structlog.testing.capture_logs() as logs:
        async with serve_app(config) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.get("/v1/models", headers={"Authorization": "Bearer top-secret-token"})
    error = assert_error_shape(response, 500, "internal_error")
    assert error["type"] == "server_error"
    assert "boom" not in response.text
    assert response.headers["x-request-id"]
    failures = [e for e in logs if e["event"] == "http.unhandled_exception"]
    assert len(failures) == 1 and "RuntimeError: boom" in failures[0]["traceback"]
    assert "top-secret-token" not in repr(logs)


async def test_openapi_documents_both_list_formats_and_the_error_shape(nc: Client) -> None:
    async with running_ingress(nc) as ingress:
        schema = (await ingress.http.get("/schema/openapi.json")).json()
    listing = schema["paths"]["/v1/models"]["get"]
    assert set(listing["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    assert {p["name"] for p in listing["parameters"]} == {"status", "format", "metadata_fields"}
    for status in ("400", "500"):
        ref = listing["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorBody"
    retrieve = schema["paths"]["/v1/models/{model_id}"]["get"]
    assert "404" in retrieve["responses"]
    entry = schema["components"]["schemas"]["ModelEntry"]
    assert set(entry["required"]) == {"id", "owned_by", "datasets", "created"}


async def test_ingress_processes_share_a_port_only_when_configured_to(nc: Client) -> None:
    """``runtime.http.processes`` above 1: each ingress binds the same port (SO_REUSEPORT) and both answer;
    left at 1, a second ingress on a taken port still fails at once."""
    base = ingress_config()
    shared = msgspec.structs.replace(
        base,
        runtime=msgspec.structs.replace(
            base.runtime, http=msgspec.structs.replace(base.runtime.http, processes=2)
        ),
    )
    stop_first, first_stopped = anyio.Event(), anyio.Event()

    async def first(*, task_status: anyio.abc.TaskStatus[int]) -> None:
        async with IngressServer(shared, nc) as server:
            task_status.started(server.port)
            await stop_first.wait()
        first_stopped.set()

    async with anyio.create_task_group() as tg, httpx.AsyncClient() as http:
        port: int = await tg.start(first)
        async with IngressServer(shared, nc, port=port) as second:
            with pytest.raises(OSError):  # one that does not share refuses to bind beside them
                async with IngressServer(base, nc, port=port):
                    pass
            assert (await http.get(f"{second.url}/health")).status_code == 200
            stop_first.set()  # the first one leaves: the second takes every new connection
            with anyio.fail_after(30):
                await first_stopped.wait()
            for _ in range(5):
                response = await http.get(f"{second.url}/health", headers={"Connection": "close"})
                assert response.status_code == 200


async def test_lifecycle_port_zero_busy_port_and_shutdown(nc: Client) -> None:
    async with IngressServer(ingress_config(), nc) as server:
        port = server.port
        assert port > 0
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/health")).status_code == 200
            with socket.socket() as busy_probe:  # the port is really taken while serving
                with pytest.raises(OSError):
                    busy_probe.bind(("127.0.0.1", port))
        with pytest.raises(OSError):
            async with IngressServer(ingress_config(), nc, port=port):
                pass
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/health")
