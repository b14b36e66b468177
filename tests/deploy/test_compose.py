"""docker-compose.yml against the Compose Specification schema; everything it mounts exists."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml

from engines.sources.registry import RegistryFile, fetch
from tests.conftest import REPO

# The Compose Specification JSON schema as shipped in the docker-compose 1.29.2 wheel.
COMPOSE_SPEC = RegistryFile(
    "docker-compose==1.29.2",
    "wheel",
    "compose/config/compose_spec.json",
    "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac",
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def test_compose_file_matches_the_specification(compose: dict[str, Any]) -> None:
    import json

    schema = json.loads(fetch(COMPOSE_SPEC).read_text())
    jsonschema.validate(compose, schema)


def test_every_mounted_or_built_path_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = REPO / (build["context"] if isinstance(build, dict) else build)
            assert (context / "Dockerfile").is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"


def test_gpu_reservation_profiles_and_grace(compose: dict[str, Any]) -> None:
    services = compose["services"]
    devices = services["detect"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["detect-cpu"]["profiles"] == ["cpu"]
    assert services["detect-cpu"]["build"]["target"] == "cpu"
    for name in ("detect", "detect-cpu"):  # stop grace longer than the server's drain
        assert int(services[name]["stop_grace_period"].rstrip("s")) > int(
            services[name]["environment"]["DETECT_SHUTDOWN_GRACE_S"]
        )
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["detect:8000"]


def test_grafana_provisioning_points_at_the_mounted_dashboards(compose: dict[str, Any]) -> None:
    provider = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/dashboards/provider.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == path
    datasource = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["uid"] == "prometheus"
