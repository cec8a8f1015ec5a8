"""``POST /v1/nsql`` answers larger than one NATS message, and ``stream: true``, over HTTP against the real
system: the ingress, a model worker in front of the stand-in upstream, an NSQL worker, and real chdb."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

from modelbus.config import NatsSettings, parse_config
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.nats_client import connected
from modelbus.schemas.nsql import NsqlReplyPart, NsqlRequest
from modelbus.schemas.subjects import NSQL_SUBJECT
from tests.support.nsql_fixtures import admin_rows, nsql_engine
from tests.support.stack import FAST_RUNTIME, nsql_stack
from tests.support.upstream import Behaviour, UpstreamServer

__all__ = ("nsql_engine",)

MAX_PAYLOAD = 1024 * 1024  # the test nats-server's default
ROWS = 1000  # the test engine's max_result_rows
# "show every order", as many as the row limit allows, with a wide column so every format is over 1 MiB
EVERY_ORDER = (
    "SELECT order_id, customer_name, total, repeat(customer_name, 200) AS note FROM sales_data "
    f"ORDER BY order_id LIMIT {ROWS}"
)
EVERY_ORDER_DIRECT = EVERY_ORDER.replace("FROM sales_data", "FROM modelbus.sales_data")
TOP5 = (
    "SELECT customer_id, customer_name, sum(total) AS total_sales FROM sales_data "
    "GROUP BY customer_id, customer_name ORDER BY total_sales DESC LIMIT 5"
)
VND = "application/vnd.spiceai.nsql.v1+json"


def sql_reply(sql: str) -> str:
    return msgspec.json.encode({"sql": sql}).decode()


@asynccontextmanager
async def system(
    nats_url: str, engine: ClickHouse, tmp_path: Path, *, nsql: str = ""
) -> AsyncIterator[tuple[UpstreamServer, httpx.AsyncClient]]:
    async with UpstreamServer() as upstream:
        config = parse_config(
            FAST_RUNTIME + f"  nsql: {{request_timeout: 60, stream_keepalive: 0.05{nsql}}}\nmodels:\n"
            + "  - name: gpt-4.1\n    from: openai:gpt-4.1\n    datasets: [sales_data]\n"
            + f"    params: {{endpoint: '{upstream.url}', api_key: sk-test, recheck_initial: 0.05, "
            + "recheck_max: 0.2}\n"
            + "datasets:\n  - name: sales_data\n    from: sample:sales_data\n",
            {},
        )  # fmt: skip
        async with (
            nsql_stack(nats_url, config, engine, tmp_path) as stack,
            httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http,
        ):
            yield upstream, http


def every_order(engine: ClickHouse) -> list[dict[str, Any]]:
    names = ("order_id", "customer_name", "total", "note")
    return [dict(zip(names, row, strict=True)) for row in admin_rows(engine, EVERY_ORDER_DIRECT)]


class Event(msgspec.Struct):
    event: str = "message"
    data: str = ""
    comments: list[str] = []


def parse_sse(text: str) -> list[Event]:
    """Server-sent events as a client reads them (the WHATWG rules): data lines joined with \\n."""
    events: list[Event] = []
    current, data = Event(), list[str]()
    for line in re.split(r"\r\n|\r|\n", text):
        if not line:
            if data or current.event != "message" or current.comments:
                current.data = "\n".join(data)
                events.append(current)
            current, data = Event(), []
        elif line.startswith(":"):
            current.comments.append(line[1:].strip())
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "event":
                current.event = value
    return events


def answer_of(events: list[Event]) -> Event:
    """The one event that is not a keep-alive comment."""
    answers = [e for e in events if not e.comments]
    assert len(answers) == 1, events
    assert all(e.comments == ["nsql still in progress"] for e in events if e.comments)
    return answers[0]


async def post_stream(http: httpx.AsyncClient, body: dict[str, Any], accept: str | None = None) -> Event:
    headers = {"Accept": accept} if accept else {}
    response = await http.post("/v1/nsql", json={**body, "stream": True}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return answer_of(parse_sse(response.text))


async def test_an_answer_larger_than_a_nats_message_comes_back_whole_in_every_format(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with system(nats_server.url, nsql_engine, tmp_path) as (upstream, http):
        upstream.upstream.behaviour = Behaviour(reply=sql_reply(EVERY_ORDER))
        expected = every_order(nsql_engine)
        body = {"query": "show every order"}

        plain = await http.post("/v1/nsql", json=body)
        assert plain.status_code == 200, plain.text[:500]
        assert len(plain.content) > MAX_PAYLOAD
        assert json.loads(plain.text, parse_float=Decimal) == expected

        vnd = await http.post("/v1/nsql", json=body, headers={"Accept": VND})
        assert len(vnd.content) > MAX_PAYLOAD
        envelope = json.loads(vnd.text, parse_float=Decimal)
        assert envelope["row_count"] == ROWS and envelope["data"] == expected
        assert "repeat(customer_name, 200)" in envelope["sql"]

        as_csv = await http.post("/v1/nsql", json=body, headers={"Accept": "text/csv"})
        assert len(as_csv.content) > MAX_PAYLOAD and as_csv.text.endswith("\r\n")
        rows = list(csv.DictReader(io.StringIO(as_csv.text, newline="")))
        assert [(int(r["order_id"]), r["note"]) for r in rows] == [
            (e["order_id"], e["note"]) for e in expected
        ]

        text = await http.post("/v1/nsql", json=body, headers={"Accept": "text/plain"})
        assert len(text.content) > MAX_PAYLOAD
        lines = text.text.splitlines()
        assert len(lines) == ROWS + 4  # rule, header, rule, the rows, rule
        assert lines[-1].startswith("+-") and expected[-1]["note"] in lines[-2]

        sql = await http.post("/v1/nsql", json=body, headers={"Accept": "application/sql"})
        assert sql.status_code == 200 and "repeat(customer_name, 200)" in sql.text

        # streamed, each is the same body in one event (line ends as \n)
        assert (await post_stream(http, body)).data == plain.text
        assert (await post_stream(http, body, VND)).data == vnd.text
        assert (await post_stream(http, body, "text/csv")).data == as_csv.text.replace("\r\n", "\n")
        assert (await post_stream(http, body, "text/plain")).data == text.text
        assert (await post_stream(http, body, "application/sql")).data == sql.text


async def test_an_answer_over_the_reply_limit_is_a_400_that_says_to_aggregate(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    limit = 2 * MAX_PAYLOAD
    async with system(nats_server.url, nsql_engine, tmp_path, nsql=f", max_reply_bytes: {limit}") as (
        upstream,
        http,
    ):
        upstream.upstream.behaviour = Behaviour(reply=sql_reply(EVERY_ORDER))
        body = {"query": "show every order"}
        refused = await http.post("/v1/nsql", json=body, headers={"Accept": "text/plain"})
        assert refused.status_code == 400, refused.text[:500]
        error = refused.json()["error"]
        assert error["code"] == "result_too_large"
        assert "aggregate" in error["message"] and str(limit) in error["message"]
        streamed = await post_stream(http, body, "text/plain")
        assert streamed.event == "error"
        assert json.loads(streamed.data)["error"]["code"] == "result_too_large"
        # half as wide: under the limit, and still more than one NATS message
        upstream.upstream.behaviour = Behaviour(reply=sql_reply(EVERY_ORDER.replace("200", "100")))
        plain = await http.post("/v1/nsql", json=body)
        assert plain.status_code == 200 and MAX_PAYLOAD < len(plain.content) <= limit


async def test_a_stream_keeps_alive_answers_in_one_event_and_reports_errors_as_events(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    async with system(nats_server.url, nsql_engine, tmp_path) as (upstream, http):
        upstream.upstream.behaviour = Behaviour(reply=sql_reply(TOP5))
        body = {"query": "Get the top 5 customers by total sales"}
        plain = await http.post("/v1/nsql", json=body)
        assert plain.status_code == 200
        answer = await post_stream(http, body)
        assert answer.event == "message"
        assert json.loads(answer.data, parse_float=Decimal) == json.loads(plain.text, parse_float=Decimal)
        sql = await post_stream(http, body, "application/sql")
        assert sql.data.lower().startswith("select") and sql.data.endswith("\n")

        # a failure once the stream began: still 200, and an error event in OpenAI's shape
        upstream.upstream.behaviour = Behaviour(reply=sql_reply("DROP TABLE sales_data"))
        failed = await post_stream(http, body)
        assert failed.event == "error"
        error = json.loads(failed.data)["error"]
        assert (error["code"], error["type"]) == ("sql_failed", "invalid_request_error")
        # what is refused before the request is queued is a plain HTTP error, as without stream
        unknown = await http.post("/v1/nsql", json={**body, "stream": True, "model": "nope"})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "model_not_found"
        wrong_type = await http.post("/v1/nsql", json={**body, "stream": "yes"})
        assert wrong_type.status_code == 400 and "stream" in wrong_type.json()["error"]["message"]
        # the OpenAPI document has the field and the event stream
        document = (await http.get("/schema/openapi.json")).json()
        operation = document["paths"]["/v1/nsql"]["post"]
        assert "text/event-stream" in operation["responses"]["200"]["content"]
        assert "stream" in document["components"]["schemas"]["NsqlQuery"]["properties"]

        # a slow model: keep-alive comments while it works; a client that leaves stops the model call
        upstream.upstream.behaviour = Behaviour(reply=sql_reply(TOP5), delay_s=60)
        upstream.upstream.requests.clear()
        comments: list[str] = []
        with anyio.fail_after(30):
            async with http.stream("POST", "/v1/nsql", json={**body, "stream": True}) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith(":"):
                        comments.append(line)
                        if len(comments) == 2:
                            break
        assert comments == [": nsql still in progress"] * 2
        with anyio.fail_after(10):
            while not (upstream.upstream.requests and upstream.upstream.requests[-1].disconnected):
                await anyio.sleep(0.05)


async def test_a_reply_whose_parts_arrive_out_of_order_is_a_502_never_a_shorter_200(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    """A faulty sender on the bus: the first message on the reply subject is part 1 of 2. The ingress must
    refuse it (502, or an error event in a stream) and stop the question."""
    async with (
        system(nats_server.url, nsql_engine, tmp_path) as (upstream, http),
        connected(NatsSettings(), nats_server.url, name="faulty") as nc,
    ):
        upstream.upstream.behaviour = Behaviour(reply=sql_reply(TOP5), delay_s=60)  # the real one is slow
        seen = await nc.subscribe(NSQL_SUBJECT)  # a core subscriber sees what the ingress queues
        body = {"query": "Get the top 5 customers by total sales"}
        before = len(upstream.upstream.requests)  # the model's readiness probe

        async def forge() -> None:
            request = msgspec.json.decode((await seen.next_msg(timeout=30)).data, type=NsqlRequest)
            part = NsqlReplyPart(request_id=request.request_id, worker_id="nsql-faulty", seq=1, data=b"]")
            await nc.publish(request.reply_to, msgspec.json.encode(part))

        async with anyio.create_task_group() as tg:
            tg.start_soon(forge)
            broken = await http.post("/v1/nsql", json=body)
        assert broken.status_code == 502, broken.text
        error = broken.json()["error"]
        assert error["code"] == "reply_incomplete" and "part 0" in error["message"]

        async with anyio.create_task_group() as tg:
            tg.start_soon(forge)
            streamed = await post_stream(http, body)
        assert streamed.event == "error"
        assert json.loads(streamed.data)["error"]["code"] == "reply_incomplete"
        # both questions were stopped, and the model calls they were waiting on (a question cancelled before
        # its NSQL worker took it made none)
        with anyio.fail_after(10):
            while not all(r.disconnected for r in upstream.upstream.requests[before:]):
                await anyio.sleep(0.05)
