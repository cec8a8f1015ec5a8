"""Connecting to a NATS server that wants credentials: user/password or a token, from typed settings."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from modelbus.config import NatsSettings
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.jetstream import model_views
from modelbus.runtime.nats_client import NatsAuthError, connect, connected
from tests.support.nats_jwt import Operator


@pytest.mark.parametrize(
    ("server_args", "good", "bad"),
    [
        (("--auth", "t0ken-s3cret"), {"token": "t0ken-s3cret"}, {"token": "wrong"}),
        (("--user", "modelbus", "--pass", "pa55word"), {"user": "modelbus", "password": "pa55word"},
         {"user": "modelbus", "password": "nope"}),
    ],
)  # fmt: skip
async def test_credentials_are_used_and_wrong_ones_refused(
    tmp_path: Path, server_args: tuple[str, ...], good: dict[str, str], bad: dict[str, str]
) -> None:
    async with EmbeddedNats(tmp_path / "nats", extra_args=server_args) as server:
        async with connected(NatsSettings(url=server.url, **good), server.url, name="t") as nc:
            reply = await nc.request("$JS.API.INFO", b"", timeout=2)
            assert b"memory" in reply.data  # an authorised JetStream answer
        settings = NatsSettings(url=server.url, connect_timeout=1, **bad)
        with anyio.fail_after(20), pytest.raises(NatsAuthError, match="refused the credentials"):
            await connect(settings, server.url, name="t")


async def test_a_creds_file_authenticates_in_operator_mode_and_a_strangers_is_refused(tmp_path: Path) -> None:
    """Decentralized auth (JWT + nkey in a .creds file), as Synadia Cloud and nsc-managed servers use."""
    operator = Operator()
    conf = operator.server_config(tmp_path / "operator.conf")
    async with EmbeddedNats(tmp_path / "nats", extra_args=("-c", str(conf))) as server:
        good = operator.user_creds(tmp_path / "modelbus.creds")
        settings = NatsSettings(url=server.url, creds_file=str(good))
        async with connected(settings, server.url, name="t") as nc:
            views = await model_views(nc.jetstream())  # modelbus's own JetStream resources work as this user
            revision = await views.put("probe", b"{}")
            assert (await views.get("probe")).revision == revision
        stranger = operator.user_creds(tmp_path / "stranger.creds", signed_by_stranger=True)
        refused = NatsSettings(url=server.url, creds_file=str(stranger), connect_timeout=1)
        with anyio.fail_after(20), pytest.raises(NatsAuthError, match="refused the credentials"):
            await connect(refused, server.url, name="t")
