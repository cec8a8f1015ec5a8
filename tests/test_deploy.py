"""The container deployment: Dockerfile, .dockerignore, compose.yaml and the config file the containers read.

No container can run here, so these check what can go wrong without one: compose.yaml against the Compose
specification's JSON schema (and that the check rejects a broken file), the things a schema cannot see
(health checks, replicas, volumes, depends_on targets, real `modelbus` commands, the mounted config
validating with the project's own loader in every service's environment), and that everything the
Dockerfile copies and installs exists.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelbus.cli.main import _parser
from modelbus.config import load_config
from modelbus.workers.model.pull import _parser as pull_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_IN_CONTAINER = "/etc/modelbus/modelbus.yaml"
ENV_REF = re.compile(r"\$\{(?:env|secrets):([A-Za-z_][A-Za-z0-9_]*)\}")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _modelbus_services() -> dict[str, dict[str, Any]]:
    """The services that run the modelbus image (its entrypoint is `modelbus`)."""
    return {n: s for n, s in _services().items() if str(s.get("image", "")).startswith("modelbus")}


def _schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _volume_source(entry: str | dict[str, Any]) -> tuple[str, str]:
    if isinstance(entry, dict):
        return str(entry.get("source", "")), str(entry["target"])
    source, target = entry.split(":")[:2]
    return source, target


def _is_named(source: str) -> bool:
    return bool(source) and not source.startswith(("/", ".", "~"))


# --- compose.yaml: the Compose specification ---------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    done = _schema_check(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(
            lambda c: c["services"]["registry"].update(helthcheck={"test": ["CMD", "true"]}), id="typo"
        ),
        pytest.param(
            lambda c: c["services"]["ingress"]["depends_on"]["registry"].update(condition="service_happy"),
            id="bad-condition",
        ),
        pytest.param(lambda c: c["services"]["model-worker"]["deploy"].update(replica=2), id="deploy-typo"),
        pytest.param(lambda c: c.update(volumes=["nats-data"]), id="volumes-not-a-map"),
    ],
)
def test_the_schema_check_rejects_a_broken_compose_file(tmp_path: Path, breakage: Any) -> None:
    data = _compose()
    breakage(data)
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(data))
    done = _schema_check(broken)
    assert done.returncode != 0, "the schema check accepted a broken file"


# --- compose.yaml: what the schema cannot see ---------------------------------------------------------


def test_the_stack_has_every_part() -> None:
    commands = {name: s.get("command", [])[:2] for name, s in _modelbus_services().items()}
    assert sorted(map(tuple, commands.values())) == sorted(
        [
            ("history", "--config"),
            ("ingress", "--config"),
            ("models", "pull"),
            ("registry", "--config"),
            ("worker", "model"),
            ("worker", "nsql"),
        ]
    )
    images = {name: s.get("image", "") for name, s in _services().items()}
    assert images["nats"].startswith("nats:")
    assert images["clickhouse"].startswith("clickhouse/clickhouse-server")
    assert "-js" in _services()["nats"]["command"] or "--jetstream" in _services()["nats"]["command"]


def test_every_service_has_a_health_check_or_says_why_not() -> None:
    for name, service in _services().items():
        check = service.get("healthcheck")
        if check is None:
            reason = service.get("x-no-healthcheck")
            assert isinstance(reason, str) and reason.strip(), f"{name}: no healthcheck and no reason"
            continue
        assert not check.get("disable", False), name
        test = check.get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_the_model_worker_is_replicated() -> None:
    replicas = _services()["model-worker"]["deploy"]["replicas"]
    assert isinstance(replicas, int) and replicas >= 2
    # replicas cannot share a published host port or a fixed container name
    assert "ports" not in _services()["model-worker"]
    assert "container_name" not in _services()["model-worker"]


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(_compose().get("volumes") or {})
    used = {
        source
        for service in _services().values()
        for source, _ in map(_volume_source, service.get("volumes", []))
        if _is_named(source)
    }
    assert used == declared
    assert {"nats-data", "clickhouse-data", "model-cache"} <= declared
    nats_mounts = dict(map(_volume_source, _services()["nats"]["volumes"]))
    store_dir = _services()["nats"]["command"][_services()["nats"]["command"].index("--store_dir") + 1]
    assert nats_mounts["nats-data"] == store_dir


def test_bind_mounts_exist() -> None:
    for name, service in _services().items():
        for source, _ in map(_volume_source, service.get("volumes", [])):
            if not _is_named(source):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_depends_on_names_real_services_with_the_right_conditions() -> None:
    services = _services()
    for name, service in services.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}, which has no check"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is a one-shot job"
            else:
                pytest.fail(f"{name} -> {target}: {condition}")
    assert (
        services["model-worker"]["depends_on"]["model-pull"]["condition"] == "service_completed_successfully"
    )
    for name in ("registry", "model-worker", "nsql-worker", "history", "ingress"):
        assert services[name]["depends_on"]["nats"]["condition"] == "service_healthy", name
    for name in ("nsql-worker", "history"):
        assert services[name]["depends_on"]["clickhouse"]["condition"] == "service_healthy", name


def _check_modelbus_argv(argv: list[str]) -> Any:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`modelbus {shlex.join(argv)}` is not a modelbus command ({exc})")
    if args.command == "models":
        try:
            pull_parser().parse_args(args.rest)
        except SystemExit:
            pytest.fail(f"`modelbus {shlex.join(argv)}`: bad `models pull` arguments")
    return args


def _service_kind(args: Any) -> str:
    """The name a process registers as `modelbus-<kind>` (what `modelbus probe <kind>` pings)."""
    return f"{args.kind}-worker" if args.command == "worker" else str(args.command)


def test_every_command_is_a_real_modelbus_command_reading_the_mounted_config() -> None:
    for name, service in _modelbus_services().items():
        command = service["command"]
        args = _check_modelbus_argv(command)
        config = args.config if args.command != "models" else pull_parser().parse_args(args.rest).config
        assert config == CONFIG_IN_CONTAINER, name
        mounts = {target: source for source, target in map(_volume_source, service.get("volumes", []))}
        assert mounts.get(CONFIG_IN_CONTAINER) == "./deploy/modelbus.compose.yaml", name


def test_probe_health_checks_ping_the_service_the_container_runs() -> None:
    for name, service in _modelbus_services().items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:2] != ["modelbus"]:
            continue
        probe = _check_modelbus_argv(test[2:])
        assert probe.command == "probe", name
        assert probe.config == CONFIG_IN_CONTAINER, name
        runs = _check_modelbus_argv(service["command"])
        assert probe.kind == _service_kind(runs), name
        # only workers carry the hostname in their ids, so only they can be checked per container
        assert probe.this_host == (runs.command == "worker"), name


def test_the_ingress_is_published_and_checked_on_its_configured_port() -> None:
    port = _deploy_config().runtime.http.port
    ingress = _services()["ingress"]
    assert any(str(p).endswith(f":{port}:{port}") or str(p) == f"{port}:{port}" for p in ingress["ports"])
    assert f"http://127.0.0.1:{port}/health" in " ".join(ingress["healthcheck"]["test"])


# --- the config file the containers read --------------------------------------------------------------


def _deploy_config(environ: dict[str, str] | None = None) -> Any:
    env = {"CLICKHOUSE_PASSWORD": "x"} if environ is None else environ
    return load_config(ROOT / "deploy" / "modelbus.compose.yaml", env)


def test_the_container_config_validates_and_points_at_the_compose_services() -> None:
    config = _deploy_config()
    services = _services()
    assert config.runtime.http.host == "0.0.0.0"
    assert config.runtime.nats.url == "nats://nats:4222"
    assert config.runtime.clickhouse.url == "http://clickhouse:8123"
    assert config.runtime.clickhouse.password == "x"  # from the environment, not the file
    for url in (config.runtime.nats.url, config.runtime.clickhouse.url):
        assert url.split("//")[1].split(":")[0] in services
    assert Path(config.runtime.state_dir).is_absolute()  # the config folder is a read-only mount
    assert [m.from_ for m in config.models] == ["local:qwen2.5-coder-0.5b-instruct"]
    assert [d.from_ for d in config.datasets] == ["sample:sales_data", "sample:customers", "sample:products"]
    assert config.models[0].datasets == ("sales_data",)


def test_every_secret_the_config_names_is_in_every_modelbus_service_environment() -> None:
    text = (ROOT / "deploy" / "modelbus.compose.yaml").read_text()
    live = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    names = set(ENV_REF.findall(live))
    assert names == {"CLICKHOUSE_PASSWORD"}
    for name, service in _modelbus_services().items():
        env = dict.fromkeys(service.get("environment", {}), "value")
        _deploy_config(env)  # raises ConfigError when a ${env:NAME} is missing
        assert names <= set(env), name
    # and ClickHouse is given the same password for the same user
    clickhouse = _services()["clickhouse"]["environment"]
    assert clickhouse["CLICKHOUSE_USER"] == _deploy_config().runtime.clickhouse.username
    assert (
        clickhouse["CLICKHOUSE_PASSWORD"]
        == _modelbus_services()["registry"]["environment"]["CLICKHOUSE_PASSWORD"]
    )


# --- Dockerfile and .dockerignore ---------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _copies() -> list[tuple[list[str], str]]:
    """The sources and destination of every COPY from the build context (not --from another stage)."""
    copies = []
    for word, rest in _instructions():
        if word == "COPY" and "--from=" not in rest:
            *sources, dest = rest.split()
            copies.append((sources, dest))
    return copies


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    ignore = [ln for ln in ignore if ln and not ln.startswith("#")]
    assert ignore[0] == "*"  # everything is out of the context, except what is let back in
    let_in = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    copied = [source for sources, _ in _copies() for source in sources]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in let_in, f"{source} is excluded by .dockerignore"


def test_the_image_gets_every_package_and_the_pinned_locks() -> None:
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in include["include"]}
    copied = {source.rstrip("/") for sources, _ in _copies() for source in sources}
    assert packages <= copied
    assert "pyproject.toml" in copied
    installs = [rest for word, rest in _instructions() if word == "RUN" and "pip install -r" in rest]
    locks = [
        Path(part).relative_to("/src") for rest in installs for part in rest.split() if part.endswith(".txt")
    ]
    assert locks == [Path("requirements/runtime.txt")]
    # the lock is what the image installs: every direct dependency must be pinned in it
    pinned = {
        re.split(r"==", line)[0].strip().lower().replace("_", "-")
        for line in (ROOT / locks[0]).read_text().splitlines()
        if "==" in line
    }
    direct = {
        re.split(r"[=<>\[ ;#]", line.strip())[0].lower().replace("_", "-")
        for line in (ROOT / "requirements" / "runtime.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert direct <= pinned, f"not in runtime.txt (run `just lock`): {sorted(direct - pinned)}"


def test_the_dockerfile_is_the_documented_shape() -> None:
    steps = _instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert [f.split()[0] for f in froms] == ["python:3.11-slim", "python:3.11-slim"]
    envs = " ".join(rest for word, rest in steps if word == "ENV")
    # llama-server is built in the portable flavor (an image moves between CPUs), and the image points at it
    builds = [rest for word, rest in steps if word == "RUN" and "modelbus engine build" in rest]
    assert len(builds) == 1 and "--flavor portable" in builds[0]
    binary = re.search(r"MODELBUS_LLAMA_SERVER=(\S+)", envs)
    assert binary is not None and binary.group(1) in builds[0]
    assert any(word == "COPY" and "--from=build" in rest and "/opt/venv" in rest for word, rest in steps)
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("ENTRYPOINT", '["modelbus"]') in steps
    # no secrets and no model file in any layer
    for word, rest in steps:
        if word in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|TOKEN|SECRET|API_KEY)\s*=", rest, re.IGNORECASE), rest
    assert ".gguf" not in DOCKERFILE.read_text()
    assert not any(word == "RUN" and "models pull" in rest for word, rest in steps)
    # the model cache the image points at is where compose mounts its volume
    cache = re.search(r"MODELBUS_MODEL_CACHE=(\S+)", envs)
    assert cache is not None
    worker_mounts = dict(map(_volume_source, _services()["model-worker"]["volumes"]))
    assert worker_mounts["model-cache"] == cache.group(1)
    assert dict(map(_volume_source, _services()["model-pull"]["volumes"]))["model-cache"] == cache.group(1)
