"""Schemathesis against the live ingress: every operation in the OpenAPI document it serves, fuzzed.

A real system runs behind the ingress (registry, one model worker, a real nats-server, chat answered by the
stand-in upstream). For every operation schemathesis generates valid requests (positive) and invalid ones
(negative) and checks every response: never a 5xx, a status the document declares, a declared content type,
and a body that matches the declared schema.

Expected 5xx, declared in the document and so not failures of the fuzzing: ``/v1/nsql`` answers 503 here
(this stack has no NSQL worker), and ``/v1/ready`` answers 503 while a model is not ready (it is ready
before fuzzing starts). ``not_a_server_error`` is told only about those two statuses, on those operations.

Valid requests are generated as they come and also with the served model (and dataset) put in, some of
the chats streamed, so the success paths (JSON and server-sent events) are checked too, not only the 400s.

Hypothesis runs derandomized (a fixed seed), with a bounded number of examples per operation and generation
mode (``FUZZ_EXAMPLES``, 25 by default; raise it for a deeper run by hand) and no shrinking, so a run is
repeatable and takes seconds.
"""

from __future__ import annotations

import os
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import anyio
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from modelbus.config import Config, parse_config
from modelbus.ingress.controllers.nsql import resolve
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.schemas.nsql import NsqlQuery
from tests.support.stack import FAST_RUNTIME, running_stack
from tests.support.upstream import UpstreamServer

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
MODEL = "gpt-4.1"
DATASET = "sales_data"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# 5xx statuses an operation declares and may rightly answer in this stack (see the module docstring)
EXPECTED_5XX = [("POST", "/v1/nsql", "503"), ("GET", "/v1/ready", "503")]
CONFIG = schemathesis.Config.from_dict(
    {
        "operations": [
            {
                "include-method": method,
                "include-path": path,
                "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", status]}},
            }
            for method, path, status in EXPECTED_5XX
        ]
    }
)


@dataclass
class Report:
    operations: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    no_negative: list[str] = field(default_factory=list)
    # per operation: how many responses of each "status media-type"
    statuses: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


def _served_model(case: Case) -> Case:
    """The case with the model this stack serves, so that valid requests also reach the success paths."""
    if "model_id" in (case.path_parameters or {}):
        case.path_parameters = {**(case.path_parameters or {}), "model_id": MODEL}
    if isinstance(case.body, dict) and "model" in case.body:
        case.body = {**case.body, "model": MODEL}
    if isinstance(case.body, dict) and "datasets" in case.body:
        case.body = {**case.body, "datasets": [DATASET]}
    return case


def _served_model_streamed(case: Case, stream: bool = True) -> Case:
    case = _served_model(case)
    if isinstance(case.body, dict) and "messages" in case.body:
        case.body = {**case.body, "stream": stream}
    return case


def _served_model_plain(case: Case) -> Case:
    """Plain and streamed chats both reach the served model, whatever ``stream`` the schema drew."""
    return _served_model_streamed(case, stream=False)


def _fuzz_operation(
    operation: APIOperation, mode: GenerationMode, base_url: str, session: requests.Session, report: Report
) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:  # most valid requests name the served model; chats also stream
        strategy = st.one_of(
            strategy, strategy.map(_served_model), strategy.map(_served_model_plain),
            strategy.map(_served_model_streamed),
        )  # fmt: skip

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the failing case as generated
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    def run(case: Case) -> None:
        response = case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=10)
        media_type = response.headers.get("content-type", [""])[0].split(";")[0]
        report.statuses[label][f"{response.status_code} {media_type}"] += 1

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        report.no_negative.append(label)  # nothing to make invalid: no parameters, no body
    except (Exception, FailureGroup) as exc:  # the first failure of an operation and mode is reported
        report.failures.append(f"{label} [{mode.value}]: {''.join(traceback.format_exception_only(exc))}")


def _fuzz(base_url: str) -> Report:
    """Runs in a worker thread (schemathesis is synchronous) while the stack serves on the event loop."""
    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json", config=CONFIG, timeout=10)
    report = Report()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            report.operations.append(f"{operation.method.upper()} {operation.path}")
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz_operation(operation, mode, base_url, session, report)
    return report


def _config(endpoint: str) -> Config:
    """One stand-in model with a dataset (declared only: there is no NSQL worker to query it)."""
    return parse_config(
        FAST_RUNTIME
        + f"models:\n  - name: {MODEL}\n    from: openai:gpt-4.1\n    datasets: [{DATASET}]\n"
        + f"    params: {{endpoint: '{endpoint}', api_key: sk-test, recheck_initial: 0.05}}\n"
        + f"datasets:\n  - name: {DATASET}\n    from: sample:sales_data\n",
        {},
    )


@pytest.mark.timeout(90)
async def test_schemathesis_finds_nothing_on_the_live_ingress(nats_server: EmbeddedNats) -> None:
    async with (
        UpstreamServer() as upstream,
        running_stack(nats_server.url, _config(upstream.url)) as stack,
    ):
        await stack.wait_ready()
        report = await anyio.to_thread.run_sync(_fuzz, stack.base_url)
    assert set(report.operations) >= {
        "GET /health",
        "GET /v1/ready",
        "GET /v1/models",
        "GET /v1/models/{model_id}",
        "POST /v1/chat/completions",
        "POST /v1/nsql",
        "POST /v1/responses",
        "GET /v1/responses/{response_id}",
        "POST /v1/embeddings",
        "GET /metrics/queues",
        "GET /metrics/workers",
        "GET /metrics/history",
    }, report.operations
    assert not report.failures, "\n\n".join(report.failures)
    # nothing to make invalid (no parameters, no body). /v1/models/events streams only when asked for
    # text/event-stream, which schemathesis never sends, so its JSON snapshot is what gets checked here.
    # A response id is any string (an unknown one is a 404), so there is no invalid one to send either.
    parameterless = {
        "GET /health", "GET /v1/models/events", "GET /v1/asyncapi.json", "GET /v1/responses/{response_id}",
        "DELETE /v1/responses/{response_id}", "GET /metrics/queues", "GET /metrics/workers",
    }  # fmt: skip
    assert set(report.no_negative) <= parameterless, report.no_negative
    # the fuzzing reached the success paths and the expected errors, not only the validation errors
    seen = {label: set(counts) for label, counts in report.statuses.items()}
    assert {
        "200 application/json",
        "200 text/event-stream",
        "400 application/json",
        "404 application/json",
    } <= seen["POST /v1/chat/completions"], seen
    assert {"200 application/json", "404 application/json"} <= seen["GET /v1/models/{model_id}"], seen
    assert {"200 application/json", "400 application/json"} <= seen["GET /v1/models"], seen
    assert {"503 application/json", "400 application/json"} <= seen["POST /v1/nsql"], seen
    assert {"200 application/json", "400 application/json"} <= seen["POST /v1/responses"], seen
    assert "404 application/json" in seen["GET /v1/responses/{response_id}"], seen


def test_an_empty_dataset_list_is_the_model_s_datasets_not_all() -> None:
    """Found by the fuzzing: ``datasets: []`` passed the ingress as "no datasets", and the NSQL worker reads
    an empty list as "all of mine", so a model restricted to some datasets could query the others."""
    config = parse_config(
        FAST_RUNTIME
        + f"models:\n  - name: {MODEL}\n    from: openai:gpt-4.1\n    datasets: [{DATASET}]\n"
        + f"datasets:\n  - name: {DATASET}\n    from: sample:sales_data\n"
        + "  - name: other\n    from: sample:sales_data\n",
        {},
    )
    model, datasets = resolve(config, NsqlQuery(query="how many?", datasets=[]))
    assert (model.name, datasets) == (MODEL, (DATASET,))
