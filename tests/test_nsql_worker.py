"""The NSQL worker on the bus: real NATS, real chdb, a real model worker in front of the stand-in upstream.

Requests are published onto the NSQL work queue as the ingress would, and the one reply is read from an
inbox of the test's own. In this process the worker shares the session's embedded engine (chdb allows one
per process); the last tests run it as a real process with the CLI, on an engine of its own.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from modelbus.config import Config, parse_config
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.nats_client import connected
from modelbus.schemas.jobs import Keepalive
from modelbus.schemas.nsql import NsqlReady, NsqlReply, NsqlRequest, ResponseFormat
from modelbus.schemas.status import ModelStatus
from modelbus.schemas.subjects import NSQL_READY_SUBJECT, NSQL_SUBJECT, cancel_subject
from modelbus.workers.model.worker import ModelWorker
from modelbus.workers.nsql.prompt import RESPONSE_FORMAT
from modelbus.workers.nsql.worker import NsqlWorker
from tests.support.nsql_fixtures import admin_rows, nsql_engine, untouched
from tests.support.processes import modelbus_argv, service
from tests.support.stack import FAST_RUNTIME
from tests.support.upstream import Behaviour, Upstream, UpstreamServer, prompt_tokens

__all__ = ("nsql_engine",)

QUESTION = "Get the top 5 customers by total sales"
ROWS = 20_000
TOP5 = (
    "SELECT customer_id, customer_name, sum(total) AS total_sales FROM sales_small "
    "GROUP BY customer_id, customer_name ORDER BY total_sales DESC LIMIT 5"
)
TOP5_DIRECT = (
    "SELECT customer_id, customer_name, sum(total) AS total_sales FROM modelbus.sales_small "
    "GROUP BY customer_id, customer_name ORDER BY total_sales DESC LIMIT 5 "
    "SETTINGS optimize_use_projections = 0"
)
MODEL_PARAMS = "api_key: sk-test, recheck_initial: 0.05, recheck_max: 0.2"
_reply_decoder = msgspec.json.Decoder(NsqlReply | Keepalive)


async def next_reply(sub: Subscription, timeout: float) -> NsqlReply:
    """The next reply on an inbox, past the keep-alives a worker sends while it answers."""
    with anyio.fail_after(timeout):
        while True:
            message = _reply_decoder.decode((await sub.next_msg(timeout=timeout)).data)
            if isinstance(message, NsqlReply):
                return message


def sql_reply(sql: str) -> str:
    return msgspec.json.encode({"sql": sql}).decode()


def nsql_config(endpoint: str) -> Config:
    """A model served by the stand-in, a small sample dataset, and a dataset whose CSV file is missing."""
    text = (
        FAST_RUNTIME
        + "  nsql: {max_attempts: 3, capacity: 2, request_timeout: 30}\n"
        + "models:\n"
        + "  - name: gpt-4.1\n    from: openai:gpt-4.1\n    datasets: [sales_small, missing]\n"
        + f"    params: {{endpoint: '{endpoint}', {MODEL_PARAMS}}}\n"
        + "datasets:\n"
        + f"  - name: sales_small\n    from: sample:sales_data\n    params: {{rows: '{ROWS}'}}\n"
        + "  - name: missing\n    from: file:missing.csv\n"
    )
    return parse_config(text, {})


@dataclass
class System:
    nc: Client  # the test's own connection, playing the ingress
    endpoint: str
    upstream: Upstream
    model_worker: ModelWorker
    worker: NsqlWorker | None

    def script(self, *replies: str, **behaviour: Any) -> None:
        """Answer the next chat requests with these texts in turn (the last repeats)."""
        self.upstream.behaviour = Behaviour(replies=list(replies), **behaviour)
        self.upstream.requests.clear()

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [seen.body for seen in self.upstream.requests]

    async def ask(
        self,
        query: str = QUESTION,
        *,
        fmt: ResponseFormat = ResponseFormat.JSON,
        datasets: tuple[str, ...] = ("sales_small",),
        timeout: float = 30,
        deadline_in: float = 30,
        request_id: str | None = None,
    ) -> NsqlReply:
        request_id = request_id or uuid.uuid4().hex
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            await self.publish(
                query, fmt=fmt, datasets=datasets, inbox=inbox, deadline_in=deadline_in, request_id=request_id
            )
            reply = await next_reply(sub, timeout)
        finally:
            await sub.unsubscribe()
        assert reply.request_id == request_id
        return reply

    async def publish(
        self,
        query: str,
        *,
        inbox: str,
        request_id: str,
        fmt: ResponseFormat = ResponseFormat.JSON,
        datasets: tuple[str, ...] = ("sales_small",),
        deadline_in: float = 30,
    ) -> None:
        request = NsqlRequest(
            request_id=request_id,
            query=query,
            model="gpt-4.1",
            datasets=datasets,
            format=fmt,
            reply_to=inbox,
            deadline=time.time() + deadline_in,
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        await self.nc.jetstream().publish(
            NSQL_SUBJECT, msgspec.json.encode(request), headers={"Nats-Msg-Id": request_id}
        )

    async def ready(self) -> NsqlReady:
        msg = await self.nc.request(NSQL_READY_SUBJECT, b"", timeout=2)
        return msgspec.json.decode(msg.data, type=NsqlReady)


async def model_ready(worker: ModelWorker, timeout: float = 15) -> None:
    with anyio.fail_after(timeout):
        while any(p.state.status is not ModelStatus.READY for p in worker.providers.values()):
            await anyio.sleep(0.02)


@asynccontextmanager
async def running(nats_url: str, *, engine: ClickHouse | None, config_dir: Path) -> AsyncIterator[System]:
    """The stand-in upstream, a model worker and (with ``engine``) an NSQL worker in this process, each
    on its own connection."""
    async with AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(UpstreamServer())
        config = nsql_config(upstream.url)
        model_nc = await stack.enter_async_context(connected(config.runtime.nats, nats_url, name="model"))
        model_worker = await stack.enter_async_context(
            ModelWorker(model_nc, config, config.models, environ={})
        )
        await model_ready(model_worker)
        worker = None
        if engine is not None:
            nsql_nc = await stack.enter_async_context(connected(config.runtime.nats, nats_url, name="nsql"))
            worker = await stack.enter_async_context(
                NsqlWorker(nsql_nc, config, config_dir=config_dir, engine=engine)
            )
        nc = await stack.enter_async_context(connected(config.runtime.nats, nats_url, name="test"))
        yield System(nc, upstream.url, upstream.upstream, model_worker, worker)


@pytest.fixture
async def system(nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path) -> AsyncIterator[System]:
    async with running(nats_server.url, engine=nsql_engine, config_dir=tmp_path) as running_system:
        yield running_system


def json_rows(reply: NsqlReply) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(reply.body, parse_float=Decimal)
    return rows


def direct_top5(engine: ClickHouse) -> list[dict[str, Any]]:
    rows = admin_rows(engine, TOP5_DIRECT)
    assert len(rows) == 5
    return [dict(zip(("customer_id", "customer_name", "total_sales"), row, strict=True)) for row in rows]


async def test_the_top5_question_is_answered_with_the_rows_of_a_direct_query(
    system: System, nsql_engine: ClickHouse
) -> None:
    system.script(sql_reply(TOP5))
    reply = await system.ask()
    assert reply.status == 200, reply
    assert reply.content_type == "application/json"
    assert reply.sql == TOP5
    assert reply.attempts == 1
    assert json_rows(reply) == direct_top5(nsql_engine)
    # the model was asked on the chat path, constrained to {"sql": ...}, with the real schema
    [body] = system.chat_bodies()
    assert body["response_format"] == RESPONSE_FORMAT
    assert body["temperature"] == 0
    assert body["max_tokens"] == 512  # runtime.nsql.max_sql_tokens: a reply cannot run on to the context end
    prompt = body["messages"][-1]["content"]
    assert QUESTION in prompt
    assert "| total | Decimal(18, 2) |" in prompt


@pytest.mark.parametrize("fmt", [ResponseFormat.VND, ResponseFormat.CSV, ResponseFormat.TEXT])
async def test_each_format(system: System, nsql_engine: ClickHouse, fmt: ResponseFormat) -> None:
    system.script(sql_reply(TOP5))
    reply = await system.ask(fmt=fmt)
    assert reply.status == 200, reply
    assert reply.content_type == fmt.content_type
    expected = direct_top5(nsql_engine)
    if fmt is ResponseFormat.VND:
        envelope = json.loads(reply.body, parse_float=Decimal)
        assert envelope["row_count"] == 5
        assert envelope["sql"] == TOP5
        assert [f["name"] for f in envelope["schema"]["fields"]] == list(expected[0])
        assert envelope["data"] == expected
    elif fmt is ResponseFormat.CSV:
        lines = reply.body.split("\r\n")
        assert lines[0] == "customer_id,customer_name,total_sales"
        assert lines[1].startswith(f"{expected[0]['customer_id']},{expected[0]['customer_name']},")
        assert lines[1].endswith(str(expected[0]["total_sales"]))
        assert len([line for line in lines if line]) == 6
    else:
        assert "| customer_id | customer_name" in reply.body
        assert str(expected[0]["total_sales"]) in reply.body
        assert len(reply.body.strip().splitlines()) == 3 + 5 + 1


async def test_sql_only_does_not_execute(system: System) -> None:
    # executing this fails on the first row; planning it does not
    poisoned = "SELECT throwIf(customer_id > 0, 'this statement was executed') AS x FROM sales_small"
    system.script(sql_reply(poisoned))
    reply = await system.ask(fmt=ResponseFormat.SQL)
    assert reply.status == 200, reply
    assert reply.content_type == "application/sql; charset=utf-8"
    assert reply.body == poisoned + "\n"
    assert reply.attempts == 1
    # the same statement, executed, does fail: proof that SQL-only did not run it
    system.script(sql_reply(poisoned))
    executed = await system.ask()
    assert executed.status == 400
    assert "this statement was executed" in (executed.error_message or "")


async def test_a_failing_first_attempt_is_retried_with_the_error(
    system: System, nsql_engine: ClickHouse
) -> None:
    wrong = "SELECT customer_name, sum(revenue) AS total_sales FROM sales_small GROUP BY customer_name"
    system.script(sql_reply(wrong), sql_reply(TOP5))
    reply = await system.ask()
    assert reply.status == 200, reply
    assert reply.attempts == 2
    assert json_rows(reply) == direct_top5(nsql_engine)
    first, second = system.chat_bodies()
    assert len(second["messages"]) == len(first["messages"]) + 2
    assert second["messages"][-2] == {"role": "assistant", "content": sql_reply(wrong)}
    retry = second["messages"][-1]["content"]
    assert wrong in retry
    assert "revenue" in retry.split("Error:", 1)[1]  # ClickHouse's own error, naming the bad column


HOSTILE = [
    ("DROP TABLE sales_small", "only SELECT"),
    ("SELECT * FROM file('/etc/passwd')", "table functions"),
    ("SELECT 1; DROP TABLE sales_small", "one statement"),
    ("INSERT INTO sales_small SELECT * FROM sales_small", "only SELECT"),
    ("SELECT * FROM system.tables", "system tables"),
    ("SELECT * FROM nsql_test.canary", "not one of the datasets"),
    ("SELECT count() FROM sales_small /* ; */ ; TRUNCATE TABLE sales_small", "one statement"),
]


async def test_hostile_sql_from_the_model_is_refused_every_attempt_and_nothing_runs(
    system: System, nsql_engine: ClickHouse
) -> None:
    for sql, reason in HOSTILE:
        system.script(sql_reply(sql))
        reply = await system.ask()
        assert reply.status == 400, (sql, reply)
        assert reply.error_code == "sql_failed"
        assert reply.attempts == 3
        assert len(system.chat_bodies()) == 3
        message = reply.error_message or ""
        assert "The query was refused" in message and reason in message, message
        assert sql in message  # the last SQL, so the client sees what the model wrote
    assert untouched(nsql_engine)
    assert admin_rows(nsql_engine, "SELECT count() FROM modelbus.sales_small") == [(ROWS,)]


async def test_a_missing_file_is_reported_and_the_other_datasets_are_served(
    system: System, tmp_path: Path
) -> None:
    ready = await system.ready()
    assert system.worker is not None and ready.worker_id == system.worker.worker_id
    by_name = {d.name: d for d in ready.datasets}
    assert by_name["sales_small"].status == "ready" and by_name["sales_small"].error_code is None
    missing = by_name["missing"]
    assert missing.status == "error"
    assert missing.error_code == "dataset.not_found"
    assert str(tmp_path / "missing.csv") in (missing.error_message or "")

    system.script(sql_reply("SELECT * FROM missing"))
    reply = await system.ask(datasets=("sales_small", "missing"))
    assert reply.status == 400
    assert reply.error_code == "dataset_unavailable"
    assert "`missing`" in (reply.error_message or "") and "dataset.not_found" in (reply.error_message or "")
    assert str(tmp_path / "missing.csv") in (reply.error_message or "")
    assert system.chat_bodies() == []  # the model was not asked

    unknown = await system.ask(datasets=("nope",))
    assert unknown.status == 400 and unknown.error_code == "dataset_not_found"
    assert "`nope`" in (unknown.error_message or "")

    system.script(sql_reply(TOP5))
    assert (await system.ask()).status == 200


@pytest.mark.parametrize(("upstream_status", "status"), [(429, 429), (401, 502), (500, 502)])
async def test_a_model_failure_keeps_its_status_except_credentials(
    system: System, upstream_status: int, status: int
) -> None:
    system.script(sql_reply(TOP5), fail_status=upstream_status)
    reply = await system.ask()
    assert reply.status == status, reply
    assert "gpt-4.1" in (reply.error_message or "")


async def test_a_retry_that_outgrows_the_models_context_ends_with_the_last_sql_error(system: System) -> None:
    """The question fits, but with a failed attempt appended it does not: the answer is the failed attempt,
    after two model calls, not the overflow (the client's question was fine) nor a third call."""
    system.script(sql_reply(TOP5))
    assert (await system.ask()).status == 200
    [first] = system.chat_bodies()
    wrong = "SELECT customer_name, sum(revenue) AS total_sales FROM sales_small GROUP BY customer_name"
    # exactly the first prompt's size: the same question fits again, the retry (longer) does not
    system.script(sql_reply(wrong), context_tokens=prompt_tokens(first))
    reply = await system.ask()
    assert reply.status == 400, reply
    assert reply.error_code == "sql_failed"
    assert reply.attempts == 1 and reply.sql == wrong
    message = reply.error_message or ""
    assert "No valid SQL after 1 attempt(s) (the model's context cannot hold another one)" in message
    assert "revenue" in message  # ClickHouse's error about the first attempt's SQL
    first_call, retry = system.chat_bodies()
    assert retry["messages"][: len(first_call["messages"])] == first_call["messages"]
    assert wrong in retry["messages"][-1]["content"]


async def test_the_deadline_gives_504_and_an_expired_request_is_not_started(system: System) -> None:
    system.script(sql_reply(TOP5), delay_s=3)
    started = time.monotonic()
    reply = await system.ask(deadline_in=1.0)
    assert reply.status == 504 and reply.error_code == "timeout"
    assert time.monotonic() - started < 2.5

    system.script(sql_reply(TOP5))
    inbox = system.nc.new_inbox()
    sub = await system.nc.subscribe(inbox)
    await system.publish(QUESTION, inbox=inbox, request_id=uuid.uuid4().hex, deadline_in=-1)
    with pytest.raises(TimeoutError):
        await sub.next_msg(timeout=1.0)  # not even a keep-alive: it was never started
    assert system.chat_bodies() == []
    assert (await system.ask()).status == 200  # the queue moved on


async def test_a_cancelled_request_stops_and_so_does_its_model_call(system: System) -> None:
    system.script(sql_reply(TOP5), delay_s=5)
    inbox = system.nc.new_inbox()
    sub = await system.nc.subscribe(inbox)
    request_id = uuid.uuid4().hex
    await system.publish(QUESTION, inbox=inbox, request_id=request_id)
    with anyio.fail_after(10):
        while not system.upstream.requests:
            await anyio.sleep(0.02)
    await system.nc.publish(cancel_subject(request_id), b"")
    with pytest.raises(TimeoutError):
        await next_reply(sub, timeout=1.0)
    with anyio.fail_after(5):
        while not system.upstream.requests[0].disconnected:
            await anyio.sleep(0.02)
    assert system.worker is not None and system.worker.consumer is not None
    assert system.worker.consumer.in_flight == 0


# ---- the worker as a process: the CLI, a data directory of its own, SIGTERM -------------------------


def write_config(tmp_path: Path, endpoint: str) -> Path:
    config = tmp_path / "modelbus.yaml"
    config.write_text(
        FAST_RUNTIME
        + "  state_dir: state\n"
        + "  nsql: {capacity: 2, request_timeout: 30}\n"
        + "models:\n"
        + "  - name: gpt-4.1\n    from: openai:gpt-4.1\n"
        + f"    params: {{endpoint: '{endpoint}', {MODEL_PARAMS}}}\n"
        + "datasets:\n"
        + f"  - name: sales_small\n    from: sample:sales_data\n    params: {{rows: '{ROWS}'}}\n"
        + "  - name: missing\n    from: file:data/missing.csv\n"
    )
    return config


async def wait_ready(system: System, timeout: float = 60) -> NsqlReady:
    with anyio.fail_after(timeout):
        while True:
            try:
                return await system.ready()
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await anyio.sleep(0.1)


async def test_the_cli_worker_serves_reports_and_drains_on_sigterm(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    secret_question = "Which customers bought the most? codeword-7f3a"
    async with running(nats_server.url, engine=None, config_dir=tmp_path) as system:
        config = write_config(tmp_path, system.endpoint)
        argv = modelbus_argv("worker", "nsql", "--config", str(config), "--nats-url", nats_server.url)
        with service(argv, tmp_path / "nsql.log") as process:
            ready = await wait_ready(system)
            by_name = {d.name: d for d in ready.datasets}
            assert by_name["sales_small"].status == "ready"
            assert by_name["missing"].error_code == "dataset.not_found"
            assert (tmp_path / "state" / "clickhouse" / "0").is_dir()  # its own data directory

            system.script(sql_reply(TOP5))
            reply = await system.ask(secret_question)
            assert reply.status == 200 and len(json_rows(reply)) == 5

            refused = await system.ask(datasets=("missing",))
            assert refused.status == 400
            assert str(tmp_path / "data" / "missing.csv") in (refused.error_message or "")

            # SIGTERM while a request is being answered: it still gets its answer, then the worker exits
            system.script(sql_reply(TOP5), delay_s=1.5)
            inbox = system.nc.new_inbox()
            sub = await system.nc.subscribe(inbox)
            await system.publish(QUESTION, inbox=inbox, request_id=uuid.uuid4().hex)
            with anyio.fail_after(10):
                while not system.upstream.requests:
                    await anyio.sleep(0.02)
            process.proc.send_signal(signal.SIGTERM)
            assert (await next_reply(sub, timeout=10)).status == 200
            assert await anyio.to_thread.run_sync(process.proc.wait, 15) == 0
            with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                await system.nc.request(NSQL_READY_SUBJECT, b"", timeout=0.5)
        logs = process.log_text()
        lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        requests = [line for line in lines if line.get("event") == "nsql.request"]
        assert len(requests) == 3
        first = requests[0]
        assert first["outcome"] == "ok" and first["status"] == 200 and first["attempts"] == 1
        assert first["query_chars"] == len(secret_question)
        assert first["traceparent"].startswith("00-0af7651916cd43dd")
        assert first["duration_ms"] > 0 and first["outside_model_ms"] > 0
        assert any(line.get("event") == "nsql_worker.drained" and not line["timed_out"] for line in lines)
        assert "codeword-7f3a" not in logs  # the question itself never reaches the logs
