"""Task history: spans from the ingress and the workers, written by the sink to ClickHouse's task_history.

Real parts: a nats-server, the session's embedded ClickHouse engine, the stand-in OpenAI upstream playing the
provider, and the official ``openai`` SDK as the client. Each test writes its own table.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from modelbus.cli.launcher import Launcher
from modelbus.config import Config, HistorySettings, NatsSettings, parse_config
from modelbus.history.sink import HistorySink
from modelbus.history.table import ensure_history_table
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.clickhouse.names import TableRef
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.jetstream import ensure_events_stream
from modelbus.runtime.nats_client import connected
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.tracing import start_span
from modelbus.schemas.status import ModelStatus
from modelbus.schemas.subjects import TASKS_STREAM, event_subject
from modelbus.schemas.views import ModelStatusEvent
from tests.ingress_helpers import eventually
from tests.support.nsql_fixtures import admin_rows, nsql_engine
from tests.support.processes import ServiceProcess, modelbus_argv, service
from tests.support.stack import FAST_RUNTIME, nsql_stack, srv_stats
from tests.support.upstream import Behaviour, UpstreamServer

__all__ = ("nsql_engine",)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
COLUMNS = (
    "task, component, model, worker_id, trace_id, span_id, parent_span_id, outcome, status_code, "
    "error_code, input, captured_output, tokens_in, tokens_out, execution_duration_ms, labels"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _table() -> str:
    return f"history_{uuid.uuid4().hex[:10]}"


def rows(engine: ClickHouse, table: str, where: str = "1") -> list[dict[str, Any]]:
    names = [c.strip() for c in COLUMNS.split(",")]
    found = admin_rows(
        engine, f"SELECT {COLUMNS} FROM modelbus.{table} FINAL WHERE {where} ORDER BY start_time"
    )
    return [dict(zip(names, row, strict=True)) for row in found]


async def rows_when(engine: ClickHouse, table: str, where: str, count: int) -> list[dict[str, Any]]:
    """The rows matching ``where`` once there are ``count`` of them (the sink writes in batches)."""

    async def probe() -> list[dict[str, Any]] | None:
        found = await anyio.to_thread.run_sync(rows, engine, table, where)
        return found if len(found) >= count else None

    return await eventually(probe, timeout=30)


def _settings(table: str, **changes: Any) -> HistorySettings:
    # keep_days 0: the tests write events from long ago, which a TTL would drop at once
    return msgspec.structs.replace(
        HistorySettings(enabled=True, table=table, flush_interval=0.1, keep_days=0), **changes
    )


async def _recording(nc: Any) -> tuple[str, HistorySettings, TaskRecorder]:
    """A table of the test's own, its settings, and a recorder whose stream is ready."""
    table = _table()
    settings = _settings(table)
    recorder = TaskRecorder(nc, settings, component="tester")
    await recorder.prepare()
    return table, settings, recorder


async def test_the_sink_writes_spans_and_status_changes_and_keeps_what_record_allows(
    nats_server: EmbeddedNats, nc: Any, nsql_engine: ClickHouse
) -> None:
    table = _table()
    prompt = "x" * 500
    recorders = {
        record: TaskRecorder(nc, _settings(table, record=record), component="tester", worker_id=f"w-{record}")
        for record in ("none", "truncated", "full")
    }
    for recorder in recorders.values():
        await recorder.prepare()
    async with HistorySink(nc, nsql_engine, _settings(table), consumer=f"sink-{table}"):
        pass  # the sink's consumer now exists: what is published while the sink is away waits for it
    for record, recorder in recorders.items():
        await recorder.record(
            start_span(f"00-{TRACE}-{PARENT}-01"), task="chat", started_at=1_700_000_000.0, outcome="ok",
            model="m", request_id=record, status_code=200, input=prompt, output="answer",
            tokens_in=12, tokens_out=3, labels={"k": "v"},
        )  # fmt: skip
    js = nc.jetstream()
    await ensure_events_stream(js)
    change = ModelStatusEvent(
        model="m", status=ModelStatus.READY, previous=ModelStatus.LOADING, ready_workers=1, workers=1,
        revision=7, at=1_700_000_001.0,
    )  # fmt: skip
    await js.publish(event_subject("m"), msgspec.json.encode(change))

    async with HistorySink(nc, nsql_engine, _settings(table), consumer=f"sink-{table}") as sink:
        spans = await rows_when(nsql_engine, table, "task = 'chat'", 3)
        status = await rows_when(nsql_engine, table, "task = 'model_status'", 1)
    assert sink.written >= 4

    by_worker = {r["worker_id"]: r for r in spans}
    assert by_worker["w-none"]["input"] is None and by_worker["w-none"]["captured_output"] is None
    assert by_worker["w-truncated"]["input"] == "x" * 200 + "…"
    assert by_worker["w-full"]["input"] == prompt
    for row in spans:
        assert row["trace_id"] == TRACE and row["parent_span_id"] == PARENT
        assert len(row["span_id"]) == 16 and row["span_id"] != PARENT
        assert (row["tokens_in"], row["tokens_out"], row["status_code"]) == (12, 3, 200)
        assert row["component"] == "tester" and row["labels"] == {"k": "v"}
        assert row["execution_duration_ms"] > 0
    [ready] = status
    assert ready["captured_output"] == "loading -> ready" and ready["model"] == "m"
    assert ready["component"] == "registry" and ready["labels"]["revision"] == "7"

    async def tasks_stream_empty() -> bool:  # a buffer, not an archive: written events leave the stream
        return (await js.stream_info(TASKS_STREAM)).state.messages == 0

    await eventually(tasks_stream_empty)


async def test_a_sink_that_restarts_loses_nothing_and_writes_nothing_twice(
    nats_server: EmbeddedNats, nc: Any, nsql_engine: ClickHouse
) -> None:
    table, settings, recorder = await _recording(nc)

    async def burst(first: int, count: int) -> None:
        for i in range(first, first + count):
            await recorder.record(
                start_span(None), task="chat", started_at=1.0 + i, outcome="ok", request_id=str(i)
            )

    async with HistorySink(nc, nsql_engine, settings, consumer=f"sink-{table}"):
        await burst(0, 50)
        await rows_when(nsql_engine, table, "1", 50)
    await burst(50, 50)  # while the sink is away: its consumer keeps them
    async with HistorySink(nc, nsql_engine, settings, consumer=f"sink-{table}"):
        await rows_when(nsql_engine, table, "1", 100)
        await anyio.sleep(0.5)  # a redelivery, if any, would land now
    plain = admin_rows(nsql_engine, f"SELECT count(), uniqExact(span_id) FROM modelbus.{table}")
    assert plain == [(100, 100)]


def _system_config(endpoint: str, table: str) -> Config:
    return parse_config(
        FAST_RUNTIME
        + f"  history: {{table: {table}, flush_interval: 0.1}}\n"
        + "  nsql: {request_timeout: 60}\n"
        + "models:\n  - name: gpt-4.1\n    from: openai:gpt-4.1\n    datasets: [task_history]\n"
        + f"    params: {{endpoint: '{endpoint}', api_key: sk-test, recheck_initial: 0.05}}\n"
        + f"datasets:\n  - name: task_history\n    from: history:{table}\n",
        {},
    )


async def test_real_requests_leave_linked_spans_and_the_history_answers_nsql(
    nats_server: EmbeddedNats, nc: Any, nsql_engine: ClickHouse, tmp_path: Path
) -> None:
    table = _table()
    async with UpstreamServer() as upstream:
        config = _system_config(upstream.url, table)
        async with nsql_stack(nats_server.url, config, nsql_engine, tmp_path, keep_history=True) as stack:
            model_worker = stack.workers[0].worker_id
            client = stack.client(default_headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
            question: list[ChatCompletionMessageParam] = [
                {"role": "user", "content": "What is the capital of France?"}
            ]
            upstream.upstream.behaviour = Behaviour(reply="Paris is the capital.")
            done = await client.chat.completions.create(model="gpt-4.1", messages=question)
            assert done.usage is not None
            stream = await client.chat.completions.create(
                model="gpt-4.1", messages=question, stream=True, stream_options={"include_usage": True}
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            upstream.upstream.behaviour = Behaviour(fail_status=500)
            with pytest.raises(openai.APIStatusError) as failed:
                await client.chat.completions.create(model="gpt-4.1", messages=question)
            assert failed.value.status_code == 502

            ingress = await rows_when(nsql_engine, table, "component = 'ingress'", 3)
            completions = await rows_when(nsql_engine, table, "task = 'ai_completion'", 3)
            [plain, streaming, failing] = ingress
            assert (plain["task"], plain["status_code"], plain["outcome"]) == ("chat", 200, "ok")
            assert (plain["tokens_in"], plain["tokens_out"]) == (
                done.usage.prompt_tokens,
                done.usage.completion_tokens,
            )
            assert plain["input"] == "What is the capital of France?"
            assert plain["captured_output"] == "Paris is the capital."
            assert (streaming["task"], streaming["outcome"]) == ("chat_stream", "ok")
            assert streaming["captured_output"] == streamed and streaming["tokens_out"]
            assert (failing["outcome"], failing["status_code"]) == ("error", 502)
            for row in ingress:  # the client's trace continues, each request its own span
                assert (row["trace_id"], row["parent_span_id"], row["model"]) == (TRACE, PARENT, "gpt-4.1")
            parents = {r["span_id"]: r for r in ingress}
            for completion in completions:  # the worker's span is the child of the ingress's
                parent = parents[completion["parent_span_id"]]
                assert completion["trace_id"] == TRACE and completion["worker_id"] == model_worker
                assert completion["outcome"] == ("error" if parent is failing else "ok")
                assert float(completion["labels"]["queued_ms"]) >= 0  # the wait between ingress and worker
            status = await rows_when(nsql_engine, table, "task = 'model_status' AND model = 'gpt-4.1'", 1)
            assert status[-1]["captured_output"].endswith("-> ready")

            # the history is a dataset: "which model failed most?"
            sql = (
                "SELECT model, countIf(outcome = 'error') AS failures FROM task_history "
                "WHERE component = 'ingress' GROUP BY model ORDER BY failures DESC LIMIT 1"
            )
            upstream.upstream.behaviour = Behaviour(reply=json.dumps({"sql": sql}))
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
                answer = await http.post(
                    "/v1/nsql", json={"query": "Which model failed most?", "datasets": ["task_history"]}
                )
            assert answer.status_code == 200, answer.text
            assert answer.json() == [{"model": "gpt-4.1", "failures": 1}]
            [nsql] = await rows_when(nsql_engine, table, "task = 'nsql'", 1)
            [text_to_sql] = await rows_when(nsql_engine, table, "task = 'text_to_sql'", 1)
            assert nsql["input"] == "Which model failed most?" and nsql["outcome"] == "ok"
            assert text_to_sql["parent_span_id"] == nsql["span_id"] and text_to_sql["captured_output"]
            asked = await rows_when(nsql_engine, table, f"parent_span_id = '{text_to_sql['span_id']}'", 1)
            assert asked[0]["task"] == "ai_completion"
            # and the workers say so in $SRV.STATS
            model_history = (await srv_stats(nc, "modelbus-model-worker"))["history"]
            assert model_history["published"] >= 4 and model_history["dropped"] == 0
            nsql_history = (await srv_stats(nc, "modelbus-nsql-worker"))["history"]
            assert nsql_history["recorder"]["published"] >= 1
            assert nsql_history["sink"]["written"] >= 8 and nsql_history["sink"]["skipped"] == 0


async def test_history_off_publishes_nothing(nats_server: EmbeddedNats, nc: Any) -> None:
    recorder = TaskRecorder(nc, HistorySettings(enabled=False), component="tester")
    await recorder.prepare()
    await recorder.record(start_span(None), task="chat", started_at=1.0, outcome="ok")
    assert recorder.published == 0
    names = [s.config.name for s in await nc.jetstream().streams_info()]
    assert "MODELBUS_TASKS" not in names


def _chdb_count(data_dir: Path, table: str) -> str:
    """Count a table's rows in a stopped service's embedded data directory, from a process of its own
    (chdb opens one data directory per process, and this one's is the session's engine)."""
    script = (
        "import sys, chdb; from chdb.session import Session; "
        f"s = Session({str(data_dir)!r}); "
        f"print(s.query('SELECT task, count() FROM modelbus.{table} GROUP BY task ORDER BY task', 'CSV'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


async def test_modelbus_history_runs_on_its_own_and_resumes_after_a_restart(
    nats_server: EmbeddedNats, nc: Any, tmp_path: Path
) -> None:
    table = _table()
    config_path = tmp_path / "modelbus.yaml"
    config_path.write_text(
        FAST_RUNTIME + f"  history: {{enabled: true, table: {table}, flush_interval: 0.1, keep_days: 0}}\n"
    )
    config = parse_config(config_path.read_text(), {})
    recorder = TaskRecorder(nc, config.runtime.history, component="tester")
    await recorder.prepare()
    argv = modelbus_argv("history", "--config", str(config_path), "--nats-url", nats_server.url)

    async def burst(run: int) -> None:
        for i in range(20):
            await recorder.record(start_span(None), task=f"run{run}", started_at=1.0 + i, outcome="ok")

    for run in range(2):  # the second run's events are published while no sink runs, and wait for it
        if run == 1:
            await burst(run)
        with service(argv, tmp_path / f"history-{run}.log") as sink:

            async def logged(text: str, sink: ServiceProcess = sink) -> bool:
                return text in sink.log_text()

            if run == 0:
                await eventually(partial(logged, "history.sink_started"), timeout=60)
                await burst(run)
            await eventually(partial(logged, '"rows":20'), timeout=60)
            assert sink.terminate() == 0
    assert _chdb_count(tmp_path / ".modelbus" / "history" / "0", table) == '"run0",20\n"run1",20'


def test_modelbus_up_runs_a_sink_only_where_the_history_can_be_queried(tmp_path: Path) -> None:
    """Unset, the history is on only where it can be asked: an NSQL worker keeps it in its embedded engine,
    or a sink writes it to a ClickHouse server. With the embedded engine and no datasets nothing could
    query it, so no engine is started for it unless the file says ``enabled: true``."""
    path = tmp_path / "modelbus.yaml"
    model = "models:\n  - name: m\n    from: openai:m\n    params: {endpoint: 'http://127.0.0.1:9/v1'}\n"
    sample = "datasets:\n  - name: sales_data\n    from: sample:sales_data\n"
    server = "  clickhouse: {url: 'http://ch:8123'}\n"
    cases = {
        model: (["registry", "model-worker:m", "ingress"], False),
        model + sample: (["registry", "model-worker:m", "nsql-worker", "ingress"], True),
        "runtime:\n" + server + model: (["registry", "model-worker:m", "history", "ingress"], True),
        "runtime:\n" + server + model + sample: (
            ["registry", "model-worker:m", "nsql-worker", "history", "ingress"], True,
        ),
        "runtime:\n  history: {enabled: true}\n" + model: (
            ["registry", "model-worker:m", "history", "ingress"], True,
        ),
        "runtime:\n  history: {enabled: false}\n" + model + sample: (
            ["registry", "model-worker:m", "nsql-worker", "ingress"], False,
        ),
        "runtime:\n  http: {processes: 2}\n" + model: (
            ["registry", "model-worker:m", "ingress-1", "ingress-2"], False,
        ),
        "runtime:\n  http: {processes: auto}\n" + model: (
            ["registry", "model-worker:m"]
            + (["ingress"] if len(os.sched_getaffinity(0)) < 4 else
               [f"ingress-{n}" for n in range(1, len(os.sched_getaffinity(0)) // 2 + 1)]),
            False,
        ),
    }  # fmt: skip
    for text, (expected, recorded) in cases.items():
        path.write_text(text)
        config = parse_config(text, {})
        assert config.runtime.history.enabled is recorded, text
        children = Launcher(config, path).children("nats://127.0.0.1:4222")
        assert [c.name for c in children] == expected, text


async def test_with_modelbus_up_the_nsql_worker_keeps_the_history_and_answers_from_it(tmp_path: Path) -> None:
    """The deployment path: `modelbus up`, every part its own process, the NSQL worker's own engine."""
    port = _free_port()
    async with UpstreamServer() as upstream:
        config = tmp_path / "modelbus.yaml"
        config.write_text(
            FAST_RUNTIME + f"  http: {{port: {port}}}\n  state_dir: state\n"
            "  history: {flush_interval: 0.1}\n"
            "models:\n  - name: gpt-4.1\n    from: openai:gpt-4.1\n    datasets: [task_history]\n"
            f"    params: {{endpoint: '{upstream.url}', api_key: sk-test, recheck_initial: 0.1}}\n"
            "datasets:\n  - name: task_history\n    from: history:task_history\n"
        )
        with service(modelbus_argv("up", "--config", str(config)), tmp_path / "up.log") as up:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:

                async def ready() -> bool:
                    try:
                        answer = await http.get("/v1/models/gpt-4.1", params={"status": "true"})
                    except httpx.TransportError:
                        return False
                    return answer.status_code == 200 and answer.json()["status"] == "ready"

                await eventually(ready, timeout=90)

                async def keeping() -> bool:  # what happens before a sink's consumer first exists is not kept
                    return "history.sink_started" in up.log_text()

                await eventually(keeping, timeout=60)
                client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
                question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
                await client.chat.completions.create(model="gpt-4.1", messages=question)
                upstream.upstream.behaviour = Behaviour(fail_status=500)
                for _ in range(2):
                    with pytest.raises(openai.APIStatusError):
                        await client.chat.completions.create(model="gpt-4.1", messages=question)
                await client.close()
                sql = (
                    "SELECT model, countIf(outcome = 'error') AS failures FROM task_history "
                    "WHERE task = 'chat' GROUP BY model ORDER BY failures DESC LIMIT 1"
                )
                upstream.upstream.behaviour = Behaviour(reply=json.dumps({"sql": sql}))

                async def failures() -> list[Any] | None:
                    query = {"query": "Which model failed most today?", "datasets": ["task_history"]}
                    answer = await http.post("/v1/nsql", json=query)
                    rows = answer.json() if answer.status_code == 200 else None
                    return rows if rows and rows[0]["failures"] == 2 else None

                assert await eventually(failures, timeout=60) == [{"model": "gpt-4.1", "failures": 2}]
            up.proc.send_signal(signal.SIGTERM)
            assert up.proc.wait(60) == 0
        assert '"child":"history"' not in up.log_text()  # the NSQL worker kept it: no sink of its own


async def test_a_batch_clickhouse_refuses_is_given_up_and_the_sink_goes_on(
    nats_server: EmbeddedNats, nc: Any, nsql_engine: ClickHouse
) -> None:
    table, settings, recorder = await _recording(nc)
    ref = f"modelbus.{table}"

    async def burst(label: str) -> None:
        for i in range(5):
            await recorder.record(start_span(None), task=label, started_at=1.0 + i, outcome="ok")

    async with HistorySink(nc, nsql_engine, settings, consumer=f"sink-{table}") as sink:
        # an operator broke the table: every insert of the sink's columns is refused
        admin_rows(nsql_engine, f"DROP TABLE {ref}")
        admin_rows(nsql_engine, f"CREATE TABLE {ref} (x UInt8) ENGINE = Memory")
        await burst("refused")

        async def given_up() -> bool:
            return sink.skipped == 5

        await eventually(given_up, timeout=30)
        assert sink.failed_writes >= 3
        admin_rows(nsql_engine, f"DROP TABLE {ref}")
        nsql_engine.admin(partial(ensure_history_table, table=TableRef("modelbus", table)))
        await burst("after")
        written = await rows_when(nsql_engine, table, "task = 'after'", 5)
    assert len(written) == 5 and not rows(nsql_engine, table, "task = 'refused'")


async def test_the_sink_goes_on_after_nats_restarts(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse
) -> None:
    settings = NatsSettings(url=nats_server.url, connect_timeout=2)
    async with (
        connected(settings, nats_server.url, name="sink") as sink_nc,
        connected(settings, nats_server.url, name="recorder") as nc,
    ):
        table, history, recorder = await _recording(nc)
        async with HistorySink(sink_nc, nsql_engine, history, consumer=f"sink-{table}") as sink:
            await recorder.record(start_span(None), task="before", started_at=1.0, outcome="ok")
            await rows_when(nsql_engine, table, "task = 'before'", 1)
            await nats_server.restart()

            async def recorded_after() -> bool:  # published once both clients are back
                await recorder.record(start_span(None), task="after", started_at=2.0, outcome="ok")
                return recorder.published >= 2 and nc.is_connected

            await eventually(recorded_after, timeout=30)
            await rows_when(nsql_engine, table, "task = 'after'", 1)
        assert sink.written >= 2


async def test_rows_older_than_keep_days_are_dropped(
    nats_server: EmbeddedNats, nc: Any, nsql_engine: ClickHouse
) -> None:
    table = _table()
    settings = _settings(table, keep_days=7)
    recorder = TaskRecorder(nc, settings, component="tester")
    await recorder.prepare()
    now = time.time()
    async with HistorySink(nc, nsql_engine, settings, consumer=f"sink-{table}") as sink:
        for task, age_days in (("old", 30), ("recent", 1)):
            await recorder.record(
                start_span(None), task=task, started_at=now - age_days * 86400, outcome="ok"
            )
        await rows_when(nsql_engine, table, "task = 'recent'", 1)

        async def both_written() -> bool:
            return sink.written == 2

        await eventually(both_written)
    # the expired row goes when its part is merged (ClickHouse may already have done it in the background)
    admin_rows(nsql_engine, f"OPTIMIZE TABLE modelbus.{table} FINAL")
    assert [r["task"] for r in rows(nsql_engine, table)] == ["recent"]
    [[create]] = admin_rows(nsql_engine, f"SHOW CREATE TABLE modelbus.{table}")
    assert "TTL" in create and "toIntervalDay(7)" in create
