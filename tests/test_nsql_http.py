"""``POST /v1/nsql`` over HTTP: the ingress, a model worker, an NSQL worker, and the real ClickHouse."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from modelbus.config import Config, parse_config
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.embedded_nats import EmbeddedNats
from tests.support.nsql_fixtures import admin_rows, nsql_engine
from tests.support.stack import FAST_RUNTIME, nsql_stack
from tests.support.upstream import Behaviour, UpstreamServer

__all__ = ("nsql_engine",)

QUESTION = "Get the top 5 customers by total sales"
TOP5 = (
    "SELECT customer_id, customer_name, sum(total) AS total_sales FROM sales_data "
    "GROUP BY customer_id, customer_name ORDER BY total_sales DESC LIMIT 5"
)
TOP5_DIRECT = (
    TOP5.replace("FROM sales_data", "FROM modelbus.sales_data") + " SETTINGS optimize_use_projections = 0"
)


def _config(model_yaml: str) -> Config:
    return parse_config(
        FAST_RUNTIME + "  nsql: {request_timeout: 60}\nmodels:\n" + model_yaml
        + "datasets:\n  - name: sales_data\n    from: sample:sales_data\n"
        + "  - name: other\n    from: sample:sales_data\n    params: {rows: '1000'}\n",
        {},
    )  # fmt: skip


def stand_in_model(endpoint: str) -> str:
    return (
        "  - name: gpt-4.1\n    from: openai:gpt-4.1\n    datasets: [sales_data]\n"
        f"    params: {{endpoint: '{endpoint}', api_key: sk-test, recheck_initial: 0.05, recheck_max: 0.2}}\n"
    )


def direct_top5(engine: ClickHouse) -> list[dict[str, Any]]:
    names = ("customer_id", "customer_name", "total_sales")
    return [dict(zip(names, row, strict=True)) for row in admin_rows(engine, TOP5_DIRECT)]


async def test_each_accept_type_answers_the_seed_question(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        upstream.upstream.behaviour = Behaviour(reply=msgspec.json.encode({"sql": TOP5}).decode())
        config = _config(stand_in_model(upstream.url))
        async with (
            nsql_stack(nats_server.url, config, nsql_engine, tmp_path) as stack,
            httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http,
        ):
            body = {
                "query": QUESTION,
                "model": "gpt-4.1",
                "sample_data_enabled": True,
                "datasets": ["sales_data"],
            }
            expected = direct_top5(nsql_engine)

            plain = await http.post("/v1/nsql", json=body)
            assert plain.status_code == 200, plain.text
            assert plain.headers["content-type"].startswith("application/json")
            assert json.loads(plain.text, parse_float=Decimal) == expected
            assert plain.headers["x-request-id"]

            vnd = await http.post(
                "/v1/nsql", json=body, headers={"Accept": "application/vnd.spiceai.nsql.v1+json"}
            )
            envelope = json.loads(vnd.text, parse_float=Decimal)
            assert envelope["row_count"] == 5 and envelope["data"] == expected
            assert [f["name"] for f in envelope["schema"]["fields"]] == [
                "customer_id",
                "customer_name",
                "total_sales",
            ]
            assert "sales_data" in envelope["sql"]
            assert envelope["explanation"].startswith("Computes sum(total) as total_sales per customer_id")
            assert "top 5 rows" in envelope["explanation"]

            sql = await http.post("/v1/nsql", json=body, headers={"Accept": "application/sql"})
            assert sql.headers["content-type"] == "application/sql; charset=utf-8"
            assert sql.text.lower().startswith("select") and "limit 5" in sql.text.lower()

            as_csv = await http.post("/v1/nsql", json=body, headers={"Accept": "text/csv"})
            assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
            rows = list(csv.DictReader(io.StringIO(as_csv.text)))
            assert [r["customer_id"] for r in rows] == [str(r["customer_id"]) for r in expected]

            text = await http.post("/v1/nsql", json=body, headers={"Accept": "text/plain"})
            assert text.headers["content-type"] == "text/plain; charset=utf-8"
            assert all(str(r["customer_name"]) in text.text for r in expected)

            # the seed's request, word for word: "nql" is Spice's name for the NSQL model
            seed = {
                "query": QUESTION,
                "model": "nql",
                "sample_data_enabled": True,
                "datasets": ["sales_data"],
            }
            assert json.loads((await http.post("/v1/nsql", json=seed)).text, parse_float=Decimal) == expected
            # no model and no datasets given: the only model with datasets, and its datasets
            default = await http.post("/v1/nsql", json={"query": QUESTION})
            assert json.loads(default.text, parse_float=Decimal) == expected
            # the prompt had the real schema in it, and asked for a JSON object
            sent = upstream.upstream.requests[-1].body
            assert sent["response_format"]["type"] in ("json_schema", "json_object")
            assert "customer_name" in json.dumps(sent["messages"])


async def test_bad_requests_are_400_and_a_missing_worker_503(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with UpstreamServer() as upstream:
        upstream.upstream.behaviour = Behaviour(
            reply=msgspec.json.encode({"sql": "DROP TABLE sales_data"}).decode()
        )
        config = _config(stand_in_model(upstream.url))
        async with (
            nsql_stack(nats_server.url, config, None, tmp_path) as stack,
            httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http,
        ):
            cases = [
                ({"query": QUESTION, "model": "nope"}, "nope"),
                ({"query": QUESTION, "datasets": ["nope"]}, "nope"),
                ({"query": QUESTION, "datasets": ["other"]}, "other"),  # not one of the model's datasets
                ({"query": ""}, "query"),
                ({"model": "gpt-4.1"}, "query"),
                ({"query": QUESTION, "extra": 1}, "extra"),
            ]
            for body, named in cases:
                response = await http.post("/v1/nsql", json=body)
                assert response.status_code == 400, body
                assert named in response.json()["error"]["message"]
            missing = await http.post("/v1/nsql", json={"query": QUESTION})
            assert missing.status_code == 503
            assert missing.json()["error"]["code"] == "nsql_unavailable"

        async with (
            nsql_stack(nats_server.url, config, nsql_engine, tmp_path) as stack,
            httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http,
        ):
            before = admin_rows(nsql_engine, "SELECT count() FROM modelbus.sales_data")
            refused = await http.post("/v1/nsql", json={"query": "delete everything"})
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "sql_failed"
            assert admin_rows(nsql_engine, "SELECT count() FROM modelbus.sales_data") == before

            # a client that hangs up stops the question, and the model call it was waiting on
            upstream.upstream.behaviour = Behaviour(
                reply=msgspec.json.encode({"sql": TOP5}).decode(), delay_s=30
            )
            with anyio.move_on_after(1.0):
                await http.post("/v1/nsql", json={"query": QUESTION})
            seen = upstream.upstream.requests[-1]
            with anyio.fail_after(10):
                while not seen.disconnected:
                    await anyio.sleep(0.05)


async def test_a_question_too_long_for_the_model_is_400_context_length_exceeded_and_asked_once(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    """The question plus its schema context overflow the model (OpenAI's and llama-server's wire format):
    a 400 that says so, not a 500, after one model call; appending the error and asking again cannot help."""
    async with UpstreamServer() as upstream:
        config = _config(stand_in_model(upstream.url))
        async with (
            nsql_stack(nats_server.url, config, nsql_engine, tmp_path) as stack,
            httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http,
        ):
            for wire in ("openai", "llama-server"):
                # its readiness ping fits in 40 of the stand-in's tokens (words); the schema does not
                upstream.upstream.behaviour = Behaviour(
                    reply=msgspec.json.encode({"sql": TOP5}).decode(), wire=wire, context_tokens=40
                )
                upstream.upstream.requests.clear()
                body = {"query": QUESTION, "datasets": ["sales_data"], "sample_data_enabled": True}
                response = await http.post("/v1/nsql", json=body)
                assert response.status_code == 400, response.text
                error = response.json()["error"]
                assert (error["code"], error["type"]) == ("context_length_exceeded", "invalid_request_error")
                message = error["message"]
                assert "question plus the schema context of `sales_data` with sample data" in message
                assert "too long for the context of model `gpt-4.1`" in message
                assert "40 tokens" in message  # the model's own account of the sizes
                assert len(upstream.upstream.requests) == 1, wire  # asked once, not max_attempts times
                prompt = json.dumps(upstream.upstream.requests[0].body["messages"])
                assert QUESTION in prompt and "customer_name" in prompt
            # a question that fits is answered by the same stack
            upstream.upstream.behaviour = Behaviour(reply=msgspec.json.encode({"sql": TOP5}).decode())
            answered = await http.post("/v1/nsql", json={"query": QUESTION})
            assert answered.status_code == 200, answered.text


@pytest.mark.slow
async def test_the_seed_question_with_the_real_local_model(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    # the default NSQL model of modelbus.yaml (the 0.5B chat model is no longer asked NSQL questions)
    model = (
        "  - name: qwen2.5-coder-1.5b\n    from: local:qwen2.5-coder-1.5b-instruct\n"
        "    datasets: [sales_data]\n"
    )
    async with (
        nsql_stack(nats_server.url, _config(model), nsql_engine, tmp_path) as stack,
        httpx.AsyncClient(base_url=stack.base_url, timeout=120) as http,
    ):
        expected = direct_top5(nsql_engine)
        for sample_data_enabled in (False, True):  # the seed's own request enables samples
            body = {"query": QUESTION, "sample_data_enabled": sample_data_enabled, "datasets": ["sales_data"]}
            response = await http.post("/v1/nsql", json=body)
            assert response.status_code == 200, response.text
            check_top5(json.loads(response.text, parse_float=Decimal), expected)


def check_top5(answer: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The model chooses its columns: the customers, in order, must be the ones a hand-written query finds,
    and any totals it adds must be theirs."""
    assert [row["customer_name"] for row in answer] == [row["customer_name"] for row in expected]
    for row, want in zip(answer, expected, strict=True):
        if "customer_id" in row:
            assert row["customer_id"] == want["customer_id"]
        for value in (v for k, v in row.items() if k not in ("customer_id", "customer_name")):
            assert Decimal(str(value)) == want["total_sales"]
