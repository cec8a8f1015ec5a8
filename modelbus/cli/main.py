"""``modelbus``: one command line for every process: ``up`` (everything), or each service on its own."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from modelbus.config import Config, ConfigError, load_config
from modelbus.runtime.logging import configure_logging
from modelbus.runtime.nats_client import NatsAuthError

if TYPE_CHECKING:
    from modelbus.runtime.lifecycle import ServiceFactory

__all__ = ("main",)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("MODELBUS_CONFIG", "modelbus.yaml"),
        help="the configuration file (default: $MODELBUS_CONFIG or ./modelbus.yaml)",
    )
    parser.add_argument("--nats-url", default=None, help="use this NATS server instead of the configured one")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelbus", description="Spice AI's LLM API over NATS workers.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the whole system (embedded NATS unless a URL is configured)")
    _common(up)
    _common(sub.add_parser("registry", help="run the registry service"))
    ingress = sub.add_parser("ingress", help="run the HTTP ingress")
    _common(ingress)
    ingress.add_argument(
        "--port", type=int, default=None, help="listen on this port instead of the configured"
    )
    worker = sub.add_parser("worker", help="run a worker")
    worker_sub = worker.add_subparsers(dest="kind", required=True)
    model_worker = worker_sub.add_parser("model", help="host models (default: every configured model)")
    _common(model_worker)
    model_worker.add_argument("--model", action="append", default=[], help="host this model (repeatable)")
    _common(worker_sub.add_parser("nsql", help="answer NSQL questions from the configured datasets"))
    embed_worker = worker_sub.add_parser(
        "embed", help="host embedding models (default: every configured one)"
    )
    _common(embed_worker)
    embed_worker.add_argument("--model", action="append", default=[], help="host this one (repeatable)")
    _common(sub.add_parser("history", help="run the task-history sink (writes task_history to ClickHouse)"))
    check = sub.add_parser("check-config", help="validate the configuration file and exit")
    check.add_argument("--config", default=os.environ.get("MODELBUS_CONFIG", "modelbus.yaml"))
    models = sub.add_parser("models", help="manage local model files")
    models.add_argument("action", choices=["pull"])
    models.add_argument("rest", nargs=argparse.REMAINDER)
    engine = sub.add_parser("engine", help="build llama.cpp's llama-server for local models (once per user)")
    engine.add_argument("action", choices=["build"])
    engine.add_argument("rest", nargs=argparse.REMAINDER)
    probe = sub.add_parser("probe", help="exit 0 if a service answers $SRV.PING within 2 s (health checks)")
    _common(probe)
    probe.add_argument("kind", help="ingress, registry, model-worker, nsql-worker, history, ...")
    probe.add_argument("--this-host", action="store_true", help="only an instance on this host counts")
    return parser


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one exit per way out
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["models", "pull"]:
        from modelbus.workers.model.pull import main as pull_main

        return pull_main(argv[2:])
    if argv[:2] == ["engine", "build"]:
        from modelbus.workers.model.engine.build import main as build_main

        return build_main(argv[2:])
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        print(f"modelbus: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        embeddings = f", {len(config.embeddings)} embedding models" if config.embeddings else ""
        print(f"{args.config}: ok ({len(config.models)} models{embeddings}, {len(config.datasets)} datasets)")
        return 0
    if args.command == "probe":
        return _probe(args, config)
    service = args.command if args.command != "worker" else f"{args.kind}-worker"
    configure_logging(config.runtime.log_level, config.runtime.log_format, service=service)
    config_path = Path(args.config).resolve()
    try:
        anyio.run(_entry(args, config, config_path), backend_options={"use_uvloop": True})
    except KeyboardInterrupt:
        return 130
    except (_Refused, NatsAuthError) as exc:
        print(f"modelbus: {exc}", file=sys.stderr)
        return 2
    return 0


class _Refused(Exception):
    """A start-up problem the operator can fix; printed without a traceback."""


def _probe(args: argparse.Namespace, config: Config) -> int:
    from modelbus.cli.probe import run_probe

    try:
        url = nats_url(config, Path(args.config).resolve(), args.nats_url)
    except _Refused as exc:
        print(f"modelbus: {exc}", file=sys.stderr)
        return 2
    return run_probe(config.runtime.nats, url, args.kind, this_host=args.this_host)


def state_dir(config: Config, config_path: Path) -> Path:
    """``runtime.state_dir``, relative to the configuration file's folder."""
    return (config_path.parent / config.runtime.state_dir).resolve()


def nats_url(config: Config, config_path: Path, override: str | None) -> str:
    if override:
        return override
    if not config.runtime.nats.embedded:
        return config.runtime.nats.url
    published = state_dir(config, config_path) / "nats.url"
    if published.is_file():
        return published.read_text().strip()
    raise _Refused(
        "runtime.nats.url is `embedded` and no `modelbus up` is running here: "
        "start one, pass --nats-url, or set runtime.nats.url"
    )


def _entry(
    args: argparse.Namespace, config: Config, config_path: Path
) -> Callable[[], Coroutine[Any, Any, None]]:
    from modelbus.runtime.lifecycle import run_service

    if args.command == "up":
        from modelbus.cli.launcher import Launcher

        async def up() -> None:
            await Launcher(config, config_path, nats_url=args.nats_url).run()

        return up

    url = nats_url(config, config_path, args.nats_url)
    name, factory = _service(args, config, config_path)
    # workers register on $SRV themselves, with their own statistics
    return partial(run_service, config, url, name=name, factory=factory, discoverable="worker" not in name)


def _service(args: argparse.Namespace, config: Config, config_path: Path) -> tuple[str, ServiceFactory]:
    """The process's service name and what makes the service from a NATS connection."""
    if args.command == "registry":
        from modelbus.registry import Registry

        return "registry", lambda nc: Registry(nc, config)
    if args.command == "ingress":
        from modelbus.ingress.server import IngressServer

        return "ingress", lambda nc: IngressServer(config, nc, port=args.port)
    if args.command == "history":
        from modelbus.history.service import HistoryService

        if not config.runtime.history.enabled:
            raise _Refused(
                "the task history is off (runtime.history.enabled; left unset it is on with a ClickHouse "
                "server or with datasets): there is no history to write"
            )
        return "history", lambda nc: HistoryService(nc, config, config_dir=config_path.parent)
    if args.kind == "nsql":
        from modelbus.workers.nsql.worker import NsqlWorker

        if not config.datasets:
            raise _Refused("no datasets are configured: an NSQL worker answers from `datasets:`")
        return "nsql-worker", lambda nc: NsqlWorker(nc, config, config_dir=config_path.parent)
    if args.kind == "embed":
        from modelbus.workers.embed.worker import EmbedWorker

        wanted = args.model or [e.name for e in config.embeddings]
        embeddings = [e for e in config.embeddings if e.name in wanted]
        if not embeddings or len(embeddings) != len(set(wanted)):
            known = [e.name for e in config.embeddings]
            raise _Refused(
                f"no such embedding model(s) among {known}: {', '.join(wanted) or '(none configured)'}"
            )
        return "embed-worker", lambda nc: EmbedWorker(nc, config, embeddings, environ=os.environ)
    from modelbus.workers.model.worker import ModelWorker

    names = args.model or [m.name for m in config.models]
    unknown = [n for n in names if config.model(n) is None]
    if unknown:
        raise _Refused(
            f"unknown model(s) {', '.join(unknown)}; configured: {[m.name for m in config.models]}"
        )
    hosted = [m for m in config.models if m.name in names]
    return "model-worker", lambda nc: ModelWorker(nc, config, hosted, environ=os.environ)


if __name__ == "__main__":
    raise SystemExit(main())
