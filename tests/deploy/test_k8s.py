"""Kubernetes manifests: schema-valid offline, consistent with the service's routes and metrics."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
CORE = [
    "deployment.yaml",
    "service.yaml",
    "hpa.yaml",
    "prometheus-adapter-rules.yaml",
    "engines-pvc.yaml",
    "engines-build-job.yaml",
]


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return data


@pytest.mark.parametrize("name", CORE)
def test_core_manifests_validate_against_kubernetes_schemas(name: str) -> None:
    kubernetes_validate.validate(load(name), "1.30.0", strict=True)


def test_kustomization_lists_every_manifest_that_exists() -> None:
    listed = load("kustomization.yaml")["resources"]
    assert all((K8S / r).is_file() for r in listed)
    assert set(CORE) <= set(listed)


def test_deployment_probes_gpu_and_graceful_drain() -> None:
    spec = load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    drain = int({e["name"]: e["value"] for e in container["env"]}["DETECT_SHUTDOWN_GRACE_S"])
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > drain + pre_stop
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_hpa_metrics_are_exported_and_served_by_the_adapter() -> None:
    metrics = [m["pods"]["metric"]["name"] for m in load("hpa.yaml")["spec"]["metrics"]]
    rules = yaml.safe_load(load("prometheus-adapter-rules.yaml")["data"]["config.yaml"])["rules"]
    adapted = {r["name"]["as"] for r in rules}
    source = (REPO / "service" / "metrics.py").read_text()
    for name in metrics:
        assert name in adapted, f"{name} has no prometheus-adapter rule"
        assert f'"{name}"' in source, f"{name} is not a metric the service exports"


def test_custom_resources_have_their_required_fields() -> None:
    """PodMonitor and InferenceService are CRDs, outside the Kubernetes schemas: check the
    fields their operators require and that they point at real ports and routes."""
    monitor = load("podmonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
    deployment = load("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    isvc = load("inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    container = isvc["spec"]["predictor"]["containers"][0]
    port = {e["name"]: e["value"] for e in container["env"]}["DETECT_PORT"]
    assert container["ports"][0]["containerPort"] == int(port)
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    kubernetes_validate.validate(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x"},
            "spec": {"containers": [container]},
        },
        "1.30.0",
        strict=True,
    )


def test_plans_are_built_once_and_shared_by_every_replica() -> None:
    """One RWX claim holds the plans; the build job and every pod mount it, on one GPU model."""
    claim = load("engines-pvc.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    name = claim["metadata"]["name"]
    deployment, job = load("deployment.yaml")["spec"]["template"], load("engines-build-job.yaml")
    job_pod = job["spec"]["template"]
    for pod in (deployment, job_pod):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["engines"]["persistentVolumeClaim"]["claimName"] == name
        mount = pod["spec"]["containers"][0]["volumeMounts"][0]
        assert (mount["name"], mount["mountPath"]) == ("engines", "/var/lib/detect/engines")
    assert deployment["spec"]["nodeSelector"] == job_pod["spec"]["nodeSelector"]
    command = job_pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["detect-serve", "build"] and "tensorrt" in command
