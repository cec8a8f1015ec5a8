"""``GET /v1/models`` and ``GET /v1/models/{id}``: every query combination, CSV, errors, live updates."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
from nats.aio.client import Client

from modelbus.config import NatsSettings
from modelbus.ingress.server import IngressServer
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.nats_client import connected
from modelbus.schemas.status import ModelStatus
from modelbus.schemas.subjects import encode_token
from modelbus.schemas.views import ModelView
from tests.ingress_helpers import (
    GPT,
    LLAMA,
    QWEN,
    SORTED_IDS,
    VIEWS,
    Running,
    eventually,
    ingress_config,
    listed_ids,
    put_view,
    running_ingress,
    views_bucket,
)

CSV_HEADER = ["id", "object", "owned_by", "datasets", "status", "error", "error_message"]


@pytest.fixture(scope="module")
async def catalog(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """One ingress over the three views of ``VIEWS``, shared by the read-only tests of this module."""
    state = Path(tmp_path_factory.mktemp("nats"))
    async with EmbeddedNats(state) as server, connected(NatsSettings(), server.url, name="catalog") as nc:
        kv = await views_bucket(nc)
        for view in VIEWS:
            await put_view(kv, view)
        async with running_ingress(nc) as ingress:

            async def all_listed() -> bool:
                return await listed_ids(ingress.http) == SORTED_IDS

            await eventually(all_listed)
            yield ingress


def expected_entry(view: ModelView, *, status: bool, metadata: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": view.id,
        "object": "model",
        "owned_by": view.owned_by,
        "datasets": list(view.datasets) or None,
        "created": view.created,
    }
    if status:
        error = view.error
        entry["status"] = view.status.value
        entry["error"] = (
            {"category": error.category.value, "type": error.type.value, "code": error.code}
            if error
            else None
        )
        entry["error_message"] = view.error_message
    if metadata:
        entry["metadata"] = {"supports_responses_api": view.supports_responses_api}
    return entry


def expected_row(view: ModelView, *, status: bool, metadata: bool) -> dict[str, str]:
    row = {
        "id": view.id,
        "object": "model",
        "owned_by": view.owned_by,
        "datasets": ",".join(view.datasets),
        "status": view.status.value if status else "",
        "error": view.error.code if status and view.error else "",
        "error_message": (view.error_message or "") if status else "",
    }
    if metadata:
        row["supports_responses_api"] = "true" if view.supports_responses_api else "false"
    return row


def by_id() -> list[ModelView]:
    return sorted(VIEWS, key=lambda v: v.id)


STATUS = [
    (None, False),
    ("true", True),
    ("false", False),
    ("1", True),
    ("0", False),
    ("TRUE", True),
    ("False", False),
]
FORMAT = [(None, "json"), ("json", "json"), ("csv", "csv"), ("CSV", "csv"), ("Json", "json")]
METADATA = [
    (None, False),
    ("", False),
    (",", False),
    ("supports_responses_api", True),
    (" supports_responses_api , ,", True),
]


@pytest.mark.parametrize(("status_param", "with_status"), STATUS)
@pytest.mark.parametrize(("format_param", "fmt"), FORMAT)
@pytest.mark.parametrize(("metadata_param", "with_metadata"), METADATA)
async def test_list_every_query_combination(
    catalog: Running,
    status_param: str | None,
    with_status: bool,
    format_param: str | None,
    fmt: str,
    metadata_param: str | None,
    with_metadata: bool,
) -> None:
    params = {
        name: value
        for name, value in (
            ("status", status_param),
            ("format", format_param),
            ("metadata_fields", metadata_param),
        )
        if value is not None
    }
    response = await catalog.http.get("/v1/models", params=params)
    assert response.status_code == 200, response.text
    if fmt == "json":
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "object": "list",
            "data": [expected_entry(v, status=with_status, metadata=with_metadata) for v in by_id()],
        }
        return
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    raw = response.content.decode()
    header = CSV_HEADER + (["supports_responses_api"] if with_metadata else [])
    assert raw.startswith(",".join(header) + "\r\n")
    assert raw.endswith("\r\n")
    reader = csv.DictReader(io.StringIO(raw, newline=""), strict=True)
    assert reader.fieldnames == header
    assert list(reader) == [expected_row(v, status=with_status, metadata=with_metadata) for v in by_id()]


async def test_list_literal_shapes(catalog: Running) -> None:
    """The exact wire text for a few cases, independent of the expectations built above."""
    body = (await catalog.http.get("/v1/models", params={"status": "true"})).json()
    gpt = body["data"][0]
    assert gpt["status"] == "error"
    assert gpt["error"] == {"category": "model", "type": "auth", "code": "model.auth"}
    assert gpt["datasets"] is None
    plain = (await catalog.http.get("/v1/models")).json()["data"][2]
    assert plain == {
        "id": "qwen2.5-coder",
        "object": "model",
        "owned_by": "local:qwen2.5-coder-0.5b-instruct",
        "datasets": ["sales", "orders"],
        "created": 1_700_000_000,
    }
    csv_text = (await catalog.http.get("/v1/models", params={"format": "csv", "status": "true"})).text
    assert csv_text.splitlines(keepends=True)[1] == (
        'gpt-4o-mini,model,openai:gpt-4o-mini,,error,model.auth,"Invalid API key, ""sk-***"" rejected\n'
    )
    assert 'qwen2.5-coder,model,local:qwen2.5-coder-0.5b-instruct,"sales,orders",ready,,\r\n' in csv_text


@pytest.mark.parametrize(
    ("params", "param", "named"),
    [
        ({"format": "xml"}, "format", ["'xml'", "json", "csv"]),
        ({"format": ""}, "format", ["''", "json", "csv"]),
        ({"status": "maybe"}, "status", ["'maybe'", "true", "false"]),
        ({"status": ""}, "status", ["''"]),
        (
            {"metadata_fields": "supports_responses_api,bogus"},
            "metadata_fields",
            ["Invalid metadata field: bogus"],
        ),
        ({"metadata_fields": " nope "}, "metadata_fields", ["Invalid metadata field: nope"]),
        ({"format": "csv", "status": "yes please"}, "status", ["'yes please'"]),
    ],
)
async def test_list_bad_query_is_400_naming_the_value(
    catalog: Running, params: dict[str, str], param: str, named: list[str]
) -> None:
    response = await catalog.http.get("/v1/models", params=params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_value", param)
    for text in named:
        assert text in error["message"]


async def test_retrieve(catalog: Running) -> None:
    response = await catalog.http.get("/v1/models/qwen2.5-coder")
    assert response.status_code == 200
    assert response.json() == {
        "id": "qwen2.5-coder",
        "object": "model",
        "created": 1_700_000_000,
        "owned_by": "local:qwen2.5-coder-0.5b-instruct",
    }
    detailed = await catalog.http.get(
        "/v1/models/gpt-4o-mini", params={"status": "1", "metadata_fields": "supports_responses_api"}
    )
    assert detailed.json() == {
        "id": "gpt-4o-mini",
        "object": "model",
        "created": 1_700_000_100,
        "owned_by": "openai:gpt-4o-mini",
        "status": "error",
        "error": {"category": "model", "type": "auth", "code": "model.auth"},
        "error_message": GPT.error_message,
        "metadata": {"supports_responses_api": False},
    }
    for path in ("/v1/models/org/llama-3.1", "/v1/models/org%2Fllama-3.1"):
        slashed = await catalog.http.get(path, params={"status": "true"})
        assert slashed.status_code == 200, path
        assert (slashed.json()["id"], slashed.json()["status"]) == ("org/llama-3.1", "loading")
    bad = await catalog.http.get("/v1/models/qwen2.5-coder", params={"metadata_fields": "colour"})
    assert bad.status_code == 400
    assert "colour" in bad.json()["error"]["message"]


async def test_retrieve_unknown_is_404_naming_the_model(catalog: Running) -> None:
    response = await catalog.http.get("/v1/models/qwen9-huge")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert "qwen9-huge" in error["message"]


async def test_openai_sdk_lists_and_retrieves(catalog: Running) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{catalog.base_url}/v1", api_key="not-checked", max_retries=0
    ) as client:
        page = await client.models.list()
        assert [m.id for m in page.data] == SORTED_IDS
        assert {m.id: m.owned_by for m in page.data}[QWEN.id] == QWEN.owned_by
        model = await client.models.retrieve("qwen2.5-coder")
        assert (model.id, model.object, model.created, model.owned_by) == (
            QWEN.id,
            "model",
            QWEN.created,
            QWEN.owned_by,
        )
        slashed = await client.models.retrieve(LLAMA.id)  # the SDK sends org%2Fllama-3.1
        assert slashed.owned_by == LLAMA.owned_by
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve("no-such-model")
        assert caught.value.code == "model_not_found"


async def test_not_initialized_until_the_first_view(nc: Client) -> None:
    async with running_ingress(nc) as ingress:
        for path in ("/v1/models", "/v1/models?format=csv", "/v1/models/qwen2.5-coder"):
            response = await ingress.http.get(path)
            assert response.status_code == 500, path
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"] == {
                "message": "App not initialized",
                "type": "server_error",
                "param": None,
                "code": "app_not_initialized",
            }
        await put_view(await views_bucket(nc), QWEN)

        async def served() -> bool:
            return await listed_ids(ingress.http) == [QWEN.id]

        await eventually(served)
        assert (await ingress.http.get("/v1/models/qwen2.5-coder")).status_code == 200


async def test_updates_deletes_and_purges_are_followed(nc: Client) -> None:
    kv = await views_bucket(nc)
    await put_view(kv, QWEN)
    await put_view(kv, GPT)
    async with running_ingress(nc) as ingress:

        async def statuses() -> dict[str, str]:
            response = await ingress.http.get("/v1/models", params={"status": "true"})
            if response.status_code != 200:
                return {}
            return {e["id"]: e["status"] for e in response.json()["data"]}

        async def both_listed() -> bool:
            return await statuses() == {GPT.id: "error", QWEN.id: "ready"}

        await eventually(both_listed)

        await put_view(
            kv, msgspec.structs.replace(GPT, status=ModelStatus.READY, error=None, error_message=None)
        )

        async def gpt_ready() -> bool:
            return (await statuses()).get(GPT.id) == "ready"

        await eventually(gpt_ready)
        assert (await ingress.http.get("/v1/models/gpt-4o-mini?status=true")).json()["error"] is None

        await kv.delete(encode_token(GPT.id))

        async def gpt_gone() -> bool:
            return await listed_ids(ingress.http) == [QWEN.id]

        await eventually(gpt_gone)
        assert (await ingress.http.get("/v1/models/gpt-4o-mini")).status_code == 404

        await put_view(kv, LLAMA)
        await kv.purge(encode_token(QWEN.id))

        async def only_llama() -> bool:
            return await listed_ids(ingress.http) == [LLAMA.id]

        await eventually(only_llama)
        # the model list stays initialized even when the bucket empties
        await kv.delete(encode_token(LLAMA.id))

        async def empty() -> bool:
            response = await ingress.http.get("/v1/models")
            return response.status_code == 200 and response.json()["data"] == []

        await eventually(empty)


async def test_bad_values_are_skipped_not_fatal(nc: Client) -> None:
    kv = await views_bucket(nc)
    async with running_ingress(nc) as ingress:
        await kv.put(encode_token("garbage"), b"{not json")
        await kv.put(encode_token("wrong-shape"), b'{"type": "modelbus.v1.model_view", "id": 3}')
        await kv.put("not_ZZdecodable", msgspec.json.encode(QWEN))
        await kv.put(encode_token("impostor"), msgspec.json.encode(QWEN))  # id differs from its key
        await put_view(kv, GPT)

        async def gpt_only() -> bool:
            return await listed_ids(ingress.http) == [GPT.id]

        await eventually(gpt_only)
        await put_view(kv, QWEN)

        async def both() -> bool:
            return await listed_ids(ingress.http) == [GPT.id, QWEN.id]

        await eventually(both)
        assert (await ingress.http.get("/v1/models/impostor")).status_code == 404


async def test_store_follows_the_bucket_across_a_nats_restart(nats_server: EmbeddedNats, nc: Client) -> None:
    kv = await views_bucket(nc)
    await put_view(kv, QWEN)
    async with running_ingress(nc) as ingress:

        async def qwen_listed() -> bool:
            return await listed_ids(ingress.http) == [QWEN.id]

        await eventually(qwen_listed)
        await nats_server.restart()

        async def put_after_restart() -> bool:
            try:
                await put_view(await views_bucket(nc), GPT)
            except Exception:
                return False
            return True

        await eventually(put_after_restart)

        async def both_listed() -> bool:
            return await listed_ids(ingress.http) == [GPT.id, QWEN.id]

        await eventually(both_listed)
        assert ingress.server.views.watches >= 2  # re-watched on reconnect (nats-py alone takes ~20 s)
        # and it keeps following: a change after the restart's catch-up arrives too
        await kv.delete(encode_token(QWEN.id))

        async def qwen_gone() -> bool:
            return await listed_ids(ingress.http) == [GPT.id]

        await eventually(qwen_gone)


async def test_a_configuration_without_models_lists_none_instead_of_not_initialized(nc: Client) -> None:
    """No model will ever report, so waiting for the first view would answer 500 forever."""
    config = msgspec.structs.replace(ingress_config(), models=())
    async with IngressServer(config, nc) as server, httpx.AsyncClient(base_url=server.url) as http:

        async def answered() -> bool:  # 500 App not initialized only until the first replay of the views
            return await listed_ids(http) is not None

        await eventually(answered, timeout=10)
        assert await listed_ids(http) == []
        as_csv = await http.get("/v1/models", params={"format": "csv"})
        assert as_csv.status_code == 200 and as_csv.text.splitlines()[0].startswith("id,object,owned_by")
        missing = await http.get("/v1/models/qwen2.5-coder")
        assert missing.status_code == 404
