"""docker-compose.yml runs what `make run` runs, as far as a machine without a container
engine can tell: Compose accepts the file, every engine command (and healthcheck) parses
with the `durable` CLI, the worker hosts the same example modules as `durable dev` and they
import, the NATS nodes' config is one nats-server accepts, and the Dockerfile ships what the
commands need."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from durable.contract import load_modules
from durable_server import cli
from durable_server.natsd import find_nats_server
from durable_server.process import DEFAULT_MODULES

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def _durable_args(command: list[str]) -> list[str]:
    assert command[0] == "durable", command
    return command[1:]


def test_compose_accepts_the_file() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        # .ci/run installs Debian's docker-compose, so CI always runs this check.
        assert not os.environ.get("CI"), "docker-compose missing: .ci/run should install it"
        pytest.skip("docker-compose is not installed here (CI installs it)")
    done = subprocess.run(
        [compose, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["control-plane", "worker"])
def test_every_engine_command_parses(name: str) -> None:
    service = _services()[name]
    args = cli._parse(cli.build_parser(), _durable_args(service["command"]))
    assert args.command in ("server", "worker")
    assert args.replicas == 3
    assert args.nats == "nats://n1:4222,nats://n2:4222,nats://n3:4222"


def test_the_worker_hosts_what_make_run_hosts_and_its_modules_import() -> None:
    args = cli._parse(cli.build_parser(), _durable_args(_services()["worker"]["command"]))
    assert args.module == DEFAULT_MODULES
    services, _ = load_modules(args.module)
    names = {h.full_name for s in services for h in s.handlers}
    assert {"greeter/greet", "orders/checkout", "signup/run", "expenses/submit"} <= names


def test_the_control_plane_has_a_healthcheck_that_asks_the_engine() -> None:
    check = _services()["control-plane"]["healthcheck"]["test"]
    assert check[0] == "CMD"
    args = cli._parse(cli.build_parser(), _durable_args(check[1:]))
    assert (args.command, args.target) == ("info", "127.0.0.1:50051")
    for node in ("n1", "n2", "n3"):
        assert "healthcheck" in _services()[node]


def test_the_nats_nodes_get_a_config_nats_server_accepts() -> None:
    for node in ("n1", "n2", "n3"):
        mounts = [v for v in _services()[node]["volumes"] if v.endswith(":ro")]
        assert mounts == ["./deploy/nats-cluster.conf:/etc/nats/durable.conf:ro"], mounts
    done = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(REPO / "deploy/nats-cluster.conf")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_the_image_ships_the_examples_and_the_cli() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY examples ./examples" in dockerfile
    # Both distributions: the engine, and the sdk with the worker extra it hosts handlers with.
    assert "pip install './sdk[worker]' ./server" in dockerfile
