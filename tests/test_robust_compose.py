"""docker/compose.yaml, checked without docker: `docker compose -f docker/compose.yaml config` in CI
when docker is installed, and this YAML test always."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker" / "compose.yaml"


def test_compose_file_runs_scalable_workers_on_one_storage_and_tracking_server():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert set(services) == {"postgres", "mlflow", "worker"}
    worker = services["worker"]
    args = dict(a.split("=", 1) for a in worker["command"][1:])
    assert worker["command"][0] == "worker" and args["study.storage"].startswith("postgresql://")
    assert args["tracking.uri"] == "http://mlflow:5000"
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N needs both absent
    assert worker["stop_signal"] == "SIGTERM" and worker["restart"] == "on-failure"
    assert set(worker["depends_on"]) == {"postgres", "mlflow"}
    # servers are published on localhost only
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert set(spec["volumes"]) >= {"pgdata", "mlartifacts", "cache"}


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker is not installed")
def test_docker_compose_config_accepts_it():
    proc = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True
    )
    if "is not a docker command" in proc.stderr or "unknown shorthand flag" in proc.stderr:
        pytest.skip("docker compose plugin not installed")
    assert proc.returncode == 0, proc.stderr
