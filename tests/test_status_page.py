"""The status page (``GET /``) in a real browser: Debian's Chromium, driven by Playwright, on a real system.

The model worker is a real process, so that killing it (``kill -9``: no goodbye) is what an operator sees;
the registry, the NSQL worker keeping the task history and the ingress run in the test. The page must ask
for the key and show nothing without it, show the model live, list a request in recent work, and turn the
model to ``error`` when its worker dies, without a reload. Screenshots go to ``.artifacts/`` (override with
``MODELBUS_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelbus.config import parse_config
from modelbus.ingress.server import IngressServer
from modelbus.registry import Registry
from modelbus.runtime.clickhouse.engine import ClickHouse
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.nats_client import connected
from modelbus.workers.nsql.worker import NsqlWorker
from tests.ingress_helpers import eventually
from tests.support.nsql_fixtures import nsql_engine
from tests.support.processes import ServiceProcess, modelbus_argv, service
from tests.support.stack import FAST_RUNTIME
from tests.support.upstream import Behaviour, UpstreamServer

__all__ = ("nsql_engine",)

playwright = pytest.importorskip("playwright.async_api", reason="playwright is in requirements/dev.txt")

KEY = "sk-status-page-key"
MODEL = "gpt-4.1"
TRACE = uuid.uuid4().hex
# what Chromium needs on these machines: no sandbox as root, and no calls home on a closed network
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent


def chromium_path() -> str | None:
    """``MODELBUS_CHROMIUM``, else Debian's ``chromium`` (``./run test`` installs it where it can)."""
    explicit = os.environ.get("MODELBUS_CHROMIUM")
    if explicit:
        return explicit
    return shutil.which("chromium") or shutil.which("chromium-browser")


def artifacts() -> Path:
    path = Path(os.environ.get("MODELBUS_ARTIFACTS") or ROOT / ".artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser_path() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip(
            "no Chromium here: the status page's browser tests need Debian's `chromium` package "
            "(`./run test` installs it when it runs as root with apt-get), or MODELBUS_CHROMIUM=/path"
        )
    return path


def _config_text(endpoint: str, table: str) -> str:
    return (
        FAST_RUNTIME
        + f"  auth: {{api_keys: [{KEY}]}}\n"
        + f"  history: {{enabled: true, table: {table}, flush_interval: 0.2}}\n"
        + f"models:\n  - name: {MODEL}\n    from: openai:gpt-4.1\n"
        + f"    params: {{endpoint: '{endpoint}', api_key: sk-test, recheck_initial: 0.05}}\n"
    )


@pytest.fixture
async def system(
    nats_server: EmbeddedNats, nsql_engine: ClickHouse, tmp_path: Path
) -> AsyncIterator[tuple[IngressServer, ServiceProcess]]:
    async with AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(UpstreamServer())
        upstream.upstream.behaviour = Behaviour(reply="All systems nominal.")
        text = _config_text(upstream.url, f"history_{uuid.uuid4().hex[:10]}")
        config_path = tmp_path / "modelbus.yaml"
        config_path.write_text(text)
        config = parse_config(text, {})

        async def connection(name: str) -> Any:
            return await stack.enter_async_context(connected(config.runtime.nats, nats_server.url, name=name))

        await stack.enter_async_context(Registry(await connection("registry"), config))
        nsql = NsqlWorker(
            await connection("nsql"), config, config_dir=tmp_path, engine=nsql_engine, keep_history=True
        )
        await stack.enter_async_context(nsql)
        argv = modelbus_argv("worker", "model", "--config", str(config_path), "--nats-url", nats_server.url)
        worker = stack.enter_context(service(argv, tmp_path / "worker.log"))
        ingress = await stack.enter_async_context(IngressServer(config, await connection("ingress"), port=0))
        await eventually(lambda: _ready(ingress), timeout=60)
        yield ingress, worker


async def _ready(ingress: IngressServer) -> bool:
    view = ingress.views.get(MODEL)
    return view is not None and view.status.value == "ready"


async def test_the_page_asks_for_the_key_then_shows_the_system_live(
    system: tuple[IngressServer, ServiceProcess], browser_path: str
) -> None:
    ingress, worker = system
    base = f"http://127.0.0.1:{ingress.port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        # a request for "recent work", with a trace id to find it by
        asked = await http.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY}", "traceparent": f"00-{TRACE}-{'1' * 16}-01"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "status?"}]},
        )
        assert asked.status_code == 200, asked.text
        assert (await http.get("/metrics/queues")).status_code == 401  # the data needs the key

    async with playwright.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(base + "/")

            # without a key: the form, and no data
            key_input = page.locator("input[type=password]")
            await key_input.wait_for()
            assert await page.locator("tr[data-model]").count() == 0
            await key_input.fill("sk-wrong-key-000")
            await key_input.press("Enter")
            refused = page.locator("#auth-error")
            await refused.wait_for()
            assert "401" in (await refused.inner_text())
            assert await page.locator("tr[data-model]").count() == 0

            # with it: the model, ready, with its worker; kept for the tab, never in the URL
            await key_input.fill(KEY)
            await key_input.press("Enter")
            row = page.locator(f'tr[data-model="{MODEL}"]')
            await row.locator('td.status[data-status="ready"]').wait_for(timeout=20_000)
            assert KEY not in page.url
            assert await page.evaluate("sessionStorage.getItem('modelbus.apiKey')") == KEY
            assert await page.locator("#live-state").inner_text() == "live"

            # the request is in recent work (the history is written in batches; the page polls it)
            recent = page.locator(f'#recent tr[data-trace="{TRACE}"]')
            await recent.wait_for(timeout=30_000)
            assert MODEL in await recent.inner_text()
            assert "ok" in await recent.inner_text()
            assert MODEL in await page.locator("#queues").inner_text()
            await page.locator("#nsql-body th").first.wait_for()  # the NSQL worker, from $SRV.STATS
            assert "in flight 0" in await row.inner_text()  # the model worker's load, from $SRV.STATS too
            await page.screenshot(path=str(artifacts() / "status-page.png"), full_page=True)

            # kill -9 the worker: the model turns to error on this page, with no reload
            await page.evaluate("window.__notReloaded = true")
            worker.kill()
            await row.locator('td.status[data-status="error"]').wait_for(timeout=20_000)
            assert await page.evaluate("window.__notReloaded === true")
            assert "worker.timeout" in await row.inner_text()
            await page.screenshot(path=str(artifacts() / "status-page-worker-killed.png"), full_page=True)

            # on a phone: nothing wider than the screen but the tables' own scrolling regions
            await page.set_viewport_size({"width": 375, "height": 800})
            overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0
            await page.screenshot(path=str(artifacts() / "status-page-phone.png"), full_page=True)
            assert errors == []
        finally:
            await browser.close()
