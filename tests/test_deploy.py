"""The container image and the Kubernetes manifest: they parse, the image runs the README's command,
and every gateway container is probed on /health (Docker and Kubernetes cannot run here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_dockerfile_parses_and_runs_the_readmes_command() -> None:
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line and not line.startswith("#")]
    instructions = [line.split()[0] for line in lines]
    assert instructions[0] == "FROM"
    assert set(instructions) <= {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "EXPOSE", "HEALTHCHECK", "CMD"}
    cmd = json.loads(next(line for line in lines if line.startswith("CMD "))[4:])
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"pip install -e \. && (python3 -m gateway serve)", readme).group(1) == " ".join(cmd)
    assert "pip install --no-cache-dir -e ." in (ROOT / "Dockerfile").read_text()


def test_the_kubernetes_manifest_parses_and_probes_health() -> None:
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "gateway.yaml").read_text()))
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in documents)
    assert kinds == [("Deployment", "gateway"), ("Deployment", "redis"), ("Service", "gateway"), ("Service", "redis")]
    gateway = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 8000}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["REDIS_URL"] == "redis://redis:6379/0"
