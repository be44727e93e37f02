"""Infra files are real configs: the Ray launcher YAML against Ray's own cluster schema, the
Kubernetes and KubeRay manifests structurally, the MLflow server's flags and auth config."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

INFRA = REPO / "infra"


def manifests(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def containers(doc: dict) -> list[dict]:
    """Every container spec of a Deployment/StatefulSet/RayCluster/RayJob document."""
    spec = doc.get("spec", {})
    templates = [spec.get("template"), spec.get("submitterPodTemplate"),
                 spec.get("headGroupSpec", {}).get("template"),
                 *(g.get("template") for g in spec.get("workerGroupSpecs", []))]
    return [c for t in templates if t for c in t["spec"]["containers"]]


ALL = sorted(p for p in INFRA.rglob("*.yaml") if "kuberay" in p.parts or "mlflow" in p.parts)


def test_the_ray_launcher_config_validates_against_rays_schema():
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # Ray's own check, after filling its defaults (as `ray up` does)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head trains nothing
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and gpu[0]["max_workers"] <= config["max_workers"]
    assert any("pip install -e ." in c for c in config["setup_commands"])
    assert any("/mnt/shared" in c for c in config["setup_commands"])
    broken = {**config, "available_node_types": {**types, "head": {**types["head"], "min_workers": "zero"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(INFRA)))
def test_manifests_are_complete_and_pin_their_images(path):
    for doc in manifests(path):
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc.get("kind")
        for c in containers(doc):
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image  # pinned tag
            requests = c.get("resources", {}).get("requests", {})
            assert "cpu" in requests and "memory" in requests, (path.name, c["name"])


def test_the_ray_cluster_has_a_gpu_group_and_every_pod_mounts_the_shared_volume():
    (cluster,) = manifests(INFRA / "kuberay" / "raycluster.yaml")
    (pvc,) = manifests(INFRA / "kuberay" / "shared-storage.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    import ray

    assert cluster["spec"]["rayVersion"] == ray.__version__  # the image matches the client's Ray
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    groups = cluster["spec"]["workerGroupSpecs"]
    gpu = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu and gpu[0]["minReplicas"] <= gpu[0]["replicas"] <= gpu[0]["maxReplicas"]
    pods = [cluster["spec"]["headGroupSpec"]["template"], *(g["template"] for g in groups)]
    for pod in pods:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
        mounts = {m["name"]: m["mountPath"] for c in pod["spec"]["containers"] for m in c["volumeMounts"]}
        assert claims == {"shared": pvc["metadata"]["name"]} and mounts["shared"] == "/mnt/shared"
        assert all(c["image"].startswith(f"rayproject/ray:{ray.__version__}") for c in pod["spec"]["containers"])
    head_env = {e["name"] for e in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= head_env


def test_the_ray_job_runs_dvc_repro_on_that_cluster():
    (job,) = manifests(INFRA / "kuberay" / "rayjob.yaml")
    (cluster,) = manifests(INFRA / "kuberay" / "raycluster.yaml")
    assert job["kind"] == "RayJob" and job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert "dvc repro" in job["spec"]["entrypoint"] and "/mnt/shared/" in job["spec"]["entrypoint"]
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["RAY_AUTH_MODE"] == "disabled"


def test_the_tracking_server_uses_postgres_s3_and_auth_and_stays_inside_the_cluster():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in manifests(INFRA / "mlflow" / "mlflow.yaml")}
    server = docs[("Deployment", "mlflow")]
    (c,) = containers(server)
    args = " ".join(c["args"])
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args and "--app-name=basic-auth" in args
    assert "--artifacts-destination=s3://" in args and "--serve-artifacts" in args
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]  # no credentials in the manifest
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"].startswith("http://minio.")
    assert all(d["spec"]["type"] == "ClusterIP" for (kind, _), d in docs.items() if kind == "Service")
    assert ("StatefulSet", "postgres") in docs and ("Deployment", "minio") in docs
    auth = configparser.ConfigParser()
    auth.read(INFRA / "mlflow" / "basic_auth.ini")
    assert auth["mlflow"]["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert auth["mlflow"]["database_uri"].startswith("postgresql://")
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text()
    import mlflow

    assert f"mlflow:v{mlflow.__version__}" in dockerfile and f"mlflow[auth]=={mlflow.__version__}" in dockerfile
