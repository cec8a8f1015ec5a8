"""The model worker's providers reach ``ready`` for real, and classify failures from structured facts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from nats.aio.client import Client

from modelbus.config import Config, parse_config
from modelbus.schemas.status import ModelStatus
from modelbus.workers.model.worker import ModelWorker
from tests.support.heartbeats import heartbeat_log
from tests.support.upstream import Behaviour, UpstreamServer


def _config(model_yaml: str) -> Config:
    return parse_config(
        "runtime:\n  heartbeat: {interval: 0.2}\nmodels:\n" + model_yaml, {"UPSTREAM_KEY": "sk-test-secret"}
    )


def _openai_model(endpoint: str, check_timeout: float = 5.0) -> Config:
    return _config(
        f"  - name: gpt-4.1\n    from: openai:gpt-4.1\n"
        f"    params: {{endpoint: '{endpoint}', api_key: '${{env:UPSTREAM_KEY}}', "
        f"recheck_initial: 0.05, recheck_max: 0.2, check_timeout: {check_timeout}}}\n"
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "model.auth"),
        (403, "model.auth"),
        (404, "model.not_found"),
        (429, "model.rate_limit"),
        (400, "model.validation"),
        (500, "model.internal"),
    ],
)
async def test_openai_failure_is_classified_then_recovers(nc: Client, status: int, code: str) -> None:
    async with UpstreamServer() as upstream, heartbeat_log(nc) as beats:
        # the message names the model id "gpt-4.1", and even says 401: classification must not read it
        upstream.upstream.behaviour = Behaviour(
            fail_status=status, fail_message="model gpt-4.1 got 401 maybe"
        )
        config = _openai_model(upstream.url)
        async with ModelWorker(nc, config, config.models, environ={}):
            failed = await beats.wait_for("gpt-4.1", ModelStatus.ERROR)
            assert failed.error is not None and failed.error.code == code
            assert failed.error_message is not None and str(status) in failed.error_message
            upstream.upstream.behaviour = Behaviour()
            await beats.wait_for("gpt-4.1", ModelStatus.READY)
        sent = upstream.upstream.requests[-1].body
        assert sent["model"] == "gpt-4.1" and sent["max_completion_tokens"] == 1
    assert beats.statuses("gpt-4.1")[:3] == [ModelStatus.LOADING, ModelStatus.ERROR, ModelStatus.READY]


async def test_llama_server_still_loading_is_model_loading_then_ready(nc: Client) -> None:
    """llama-server answers 503 ``unavailable_error`` while it loads: by that type, the model is loading,
    not failing (``model.internal``, as a plain 5xx would be)."""
    async with UpstreamServer() as upstream, heartbeat_log(nc) as beats:
        upstream.upstream.behaviour = Behaviour(
            wire="llama-server", fail_status=503, fail_message="Loading model"
        )
        config = _openai_model(upstream.url)
        async with ModelWorker(nc, config, config.models, environ={}):
            failed = await beats.wait_for("gpt-4.1", ModelStatus.ERROR)
            assert failed.error is not None and failed.error.code == "model.loading"
            assert failed.error_message is not None and "Loading model" in failed.error_message
            upstream.upstream.behaviour = Behaviour()
            await beats.wait_for("gpt-4.1", ModelStatus.READY)


async def test_openai_sends_the_key_and_a_wrong_key_is_auth(nc: Client) -> None:
    async with UpstreamServer() as upstream, heartbeat_log(nc) as beats:
        upstream.upstream.behaviour = Behaviour(api_key="sk-other")
        config = _openai_model(upstream.url)
        async with ModelWorker(nc, config, config.models, environ={}):
            failed = await beats.wait_for("gpt-4.1", ModelStatus.ERROR)
            assert failed.error is not None and failed.error.code == "model.auth"
            assert failed.error_message is not None and "sk-test-secret" not in failed.error_message
            upstream.upstream.behaviour = Behaviour(api_key="sk-test-secret")
            await beats.wait_for("gpt-4.1", ModelStatus.READY)


async def test_openai_refused_connection(nc: Client) -> None:
    config = _openai_model(f"http://127.0.0.1:{_closed_port()}/v1")
    async with heartbeat_log(nc) as beats, ModelWorker(nc, config, config.models, environ={}):
        failed = await beats.wait_for("gpt-4.1", ModelStatus.ERROR)
        assert failed.error is not None and failed.error.code == "model.connection"


async def test_openai_timeout(nc: Client) -> None:
    async with UpstreamServer() as upstream, heartbeat_log(nc) as beats:
        upstream.upstream.behaviour = Behaviour(delay_s=2.0)
        config = _openai_model(upstream.url, check_timeout=0.2)
        async with ModelWorker(nc, config, config.models, environ={}):
            failed = await beats.wait_for("gpt-4.1", ModelStatus.ERROR)
            assert failed.error is not None and failed.error.code == "model.timeout"


async def test_local_missing_file_is_a_loading_error(nc: Client, tmp_path: Path) -> None:
    config = _config(f"  - name: tiny\n    from: local:{tmp_path / 'absent.gguf'}\n")
    async with heartbeat_log(nc) as beats, ModelWorker(nc, config, config.models, environ={}):
        failed = await beats.wait_for("tiny", ModelStatus.ERROR)
        assert failed.error is not None and failed.error.code == "model.loading"
        assert failed.error_message is not None and "not found" in failed.error_message


async def test_local_corrupt_file_is_a_loading_error(nc: Client, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    config = _config(f"  - name: tiny\n    from: local:{corrupt}\n")
    async with heartbeat_log(nc) as beats, ModelWorker(nc, config, config.models, environ={}):
        failed = await beats.wait_for("tiny", ModelStatus.ERROR)
        assert failed.error is not None and failed.error.code == "model.loading"


async def test_local_file_with_wrong_hash_is_refused(nc: Client, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(b"not the pinned model")
    config = _config(f"  - name: tiny\n    from: local:{wrong}\n    params: {{sha256: '{'0' * 64}'}}\n")
    async with heartbeat_log(nc) as beats, ModelWorker(nc, config, config.models, environ={}):
        failed = await beats.wait_for("tiny", ModelStatus.ERROR)
        assert failed.error is not None and failed.error.code == "model.loading"
        assert failed.error_message is not None and "sha256" in failed.error_message


@pytest.mark.slow
async def test_local_model_loads_then_ready(nc: Client) -> None:
    import os

    config = _config("  - name: qwen2.5-coder\n    from: local:qwen2.5-coder-0.5b-instruct\n")
    async with heartbeat_log(nc) as beats, ModelWorker(nc, config, config.models, environ=os.environ):
        ready = await beats.wait_for("qwen2.5-coder", ModelStatus.READY, timeout=120)
        # the capacity is llama-server's slots: params.parallel, 4 by default
        assert ready.capacity == 4 and ready.info.owned_by == "local:qwen2.5-coder-0.5b-instruct"
    assert beats.statuses("qwen2.5-coder")[:2] == [ModelStatus.LOADING, ModelStatus.READY]
