"""deploy/k8s: Kubernetes schemas (offline, strict), and what the manifests promise operators.

The base's files are validated one by one; the example overlay (and the overlay
with the optional HPA component) is rendered with ``kubectl kustomize`` or
``kustomize build`` and validated as rendered. Schemas come from the
``kubernetes-validate`` package, which ships them: nothing is fetched.
The PodMonitor is a Prometheus Operator CRD without a schema there, so it gets
structural checks only.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_util import DEPLOY, IMAGE, config_from, parse_cli, tool

K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
HPA_COMPONENT = K8S / "components" / "hpa-consumer-lag"

# The oldest Kubernetes still commonly run by carriers, and the newest the package knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
NO_SCHEMA_KINDS = {"PodMonitor"}  # CRD: checked structurally below
PARTITIONS_ANNOTATION = "filterd/input-partitions"

Doc = dict[str, Any]


def _docs(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def _render_command() -> list[str] | None:
    kubectl = tool("kubectl")
    if kubectl is not None:
        return [kubectl, "kustomize"]
    kustomize = tool("kustomize")
    if kustomize is not None:
        return [kustomize, "build"]
    return None


def render(directory: Path) -> list[Doc]:
    command = _render_command()
    if command is None:
        pytest.skip("neither kubectl nor kustomize is installed: overlays not rendered")
    result = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return _docs(result.stdout)


@pytest.fixture(scope="module")
def overlay() -> list[Doc]:
    return render(OVERLAY)


@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    """The example overlay plus the optional HPA component, as an operator would combine them."""
    root = tmp_path_factory.mktemp("autoscaled")
    # kustomize refuses absolute paths to other kustomizations: relative ones it is.
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "sms-filter",
        "resources": [os.path.relpath(OVERLAY, root)],
        "components": [os.path.relpath(HPA_COMPONENT, root)],
    }
    (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return render(root)


def _one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _validate_all(docs: list[Doc]) -> list[str]:
    kinds = []
    for doc in docs:
        kinds.append(doc["kind"])
        if doc["kind"] in NO_SCHEMA_KINDS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    return kinds


def _base_docs() -> list[Doc]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for resource in kustomization["resources"]:
        docs.extend(_docs((BASE / resource).read_text()))
    return docs


def test_base_files_validate_strictly() -> None:
    kinds = _validate_all(_base_docs())
    assert {"Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim"} <= set(kinds)


def test_hpa_component_validates_strictly() -> None:
    kinds = _validate_all(_docs((HPA_COMPONENT / "hpa.yaml").read_text()))
    assert kinds == ["HorizontalPodAutoscaler"]


def test_validator_rejects_a_misspelt_field() -> None:
    """Strict validation really constrains: a typo in the Deployment is refused."""
    deployment = _one(_base_docs(), "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_rendered_overlay_validates_strictly(overlay: list[Doc]) -> None:
    kinds = _validate_all(overlay)
    assert {"Namespace", "ConfigMap", "Deployment", "CronJob", "PodMonitor"} <= set(kinds)
    assert all(
        d["metadata"].get("namespace") == "sms-filter"
        for d in overlay
        if d["kind"] != ("Namespace")
    )


def test_rendered_autoscaled_overlay_validates_strictly(autoscaled: list[Doc]) -> None:
    assert "HorizontalPodAutoscaler" in _validate_all(autoscaled)


def _container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Doc = containers[0]
    return container


def _mounted_config(docs: list[Doc], deployment: Doc) -> tuple[Path, dict[str, Any]]:
    """The config file the container's --config names, and its text, from the ConfigMap."""
    container = _container(deployment)
    parse_cli(container["command"][1:] + container["args"])
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mount = next(m for m in container["volumeMounts"] if config_path.is_relative_to(m["mountPath"]))
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if (v["name"] == mount["name"])
    )
    configmap = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and (d["metadata"]["name"] == volume["configMap"]["name"])
    )
    text = configmap["data"][str(config_path.relative_to(mount["mountPath"]))]
    return config_path, {"text": text}


def _secret_paths(deployment: Doc) -> dict[str, str]:
    """Files the container sees from Secret volumes: path -> secret name (a whole-Secret
    mount is listed as its directory, ending in /)."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    found: dict[str, str] = {}
    for mount in _container(deployment)["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert mount.get("readOnly") is True, mount
        items = secret.get("items")
        if items is None:
            found[mount["mountPath"].rstrip("/") + "/"] = secret["secretName"]
        for item in items or ():
            found[f"{mount['mountPath']}/{item['path']}"] = secret["secretName"]
    return found


def _check_secrets(raw: dict[str, Any], deployment: Doc) -> dict[str, str]:
    """Every secret the config names is a read-only Secret file; never a plain env value."""
    secrets = _secret_paths(deployment)
    container = _container(deployment)
    plain = {e["name"] for e in container.get("env", []) if "value" in e}
    assert "FILTERD_KAFKA_SASL_PASSWORD" not in plain, "a password in the manifest"
    named = {
        "kafka.sasl_password_file": raw.get("kafka", {}).get("sasl_password_file", ""),
        "kafka.ssl_cafile": raw.get("kafka", {}).get("ssl_cafile", ""),
        "snapshot.public_key": raw.get("snapshot", {}).get("public_key", ""),
    }
    for key, path in named.items():
        if path:
            assert path in secrets or any(
                d.endswith("/") and path.startswith(d) for d in secrets
            ), f"{key} = {path} is not a file of a mounted Secret"
    return {k: v for k, v in named.items() if v}


def _check_deployment(docs: list[Doc], tmp_path: Path) -> None:
    deployment = _one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)

    _, config = _mounted_config(docs, deployment)
    path = tmp_path / "filterd.toml"
    path.write_text(config["text"])
    raw = tomllib.loads(config["text"])  # a TOML error names the line
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    if "kafka.sasl_password_file" in _check_secrets(raw, deployment):
        # Stand in for the mounted Secret so the config loads as in the pod.
        stand_in = tmp_path / "password"
        stand_in.write_text("from-the-secret\n")
        env["FILTERD_KAFKA_SASL_PASSWORD_FILE"] = str(stand_in)
    cfg = config_from(path, env)

    # Probes on the metrics port, at the product's paths.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == cfg.metrics.port
    assert cfg.metrics.host == "0.0.0.0", "probes reach the pod IP, not loopback"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"

    # Graceful termination outlasts filterd's own drain.
    assert pod["terminationGracePeriodSeconds"] > cfg.service.shutdown_timeout_s

    # Read-only, non-root, no privileges.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 1000
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    # Resources: a CPU request and a memory limit.
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]

    # Snapshots: the configured root is a read-only PVC mount.
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(cfg.snapshot.root))
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]

    # Scale-out is the consumer group: never more pods than input partitions.
    partitions = int(deployment["metadata"]["annotations"][PARTITIONS_ANNOTATION])
    assert 1 <= deployment["spec"]["replicas"] <= partitions
    # Rollout: replace old pods first so a surge pod never waits for a partition.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0

    # The Service, PDB and PodMonitor select these pods and use the named port.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget", "PodMonitor"):
        selector = _one(docs, kind)["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), kind
    service = _one(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    endpoint = _one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert _one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_base_deployment_keeps_its_promises(tmp_path: Path) -> None:
    docs = _base_docs()
    # The base's ConfigMap comes from its configMapGenerator: build it by hand here.
    generator = yaml.safe_load((BASE / "kustomization.yaml").read_text())["configMapGenerator"][0]
    docs.append(
        {
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"]},
            "data": {f: (BASE / f).read_text() for f in generator["files"]},
        }
    )
    _check_deployment(docs, tmp_path)


def test_base_runs_the_image_make_image_builds() -> None:
    (image,) = yaml.safe_load((BASE / "kustomization.yaml").read_text())["images"]
    assert image["name"] == _container(_one(_base_docs(), "Deployment"))["image"]
    assert f"{image['newName']}:{image['newTag']}" == IMAGE


def test_overlay_deployment_keeps_its_promises(overlay: list[Doc], tmp_path: Path) -> None:
    _check_deployment(overlay, tmp_path)
    deployment = _one(overlay, "Deployment")
    # The secured path: SASL_SSL, the password, CA and snapshot key from Secrets.
    _, config = _mounted_config(overlay, deployment)
    raw = tomllib.loads(config["text"])
    assert raw["kafka"]["security_protocol"] == "SASL_SSL"
    assert set(_check_secrets(raw, deployment)) == {
        "kafka.sasl_password_file",
        "kafka.ssl_cafile",
        "snapshot.public_key",
    }
    assert deployment["spec"]["replicas"] == 6
    # The overlay runs the image `make image` built, pushed to its registry (docs/deploy.md).
    assert _container(deployment)["image"].endswith(":" + IMAGE.partition(":")[2])
    # The generated ConfigMap's hashed name is what the pods mount.
    names = {d["metadata"]["name"] for d in overlay if d["kind"] == "ConfigMap"}
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {v["configMap"]["name"] for v in volumes if "configMap" in v} <= names


def test_hpa_never_exceeds_the_partitions(autoscaled: list[Doc]) -> None:
    hpa = _one(autoscaled, "HorizontalPodAutoscaler")
    deployment = _one(autoscaled, "Deployment")
    partitions = int(deployment["metadata"]["annotations"][PARTITIONS_ANNOTATION])
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]
    assert metric["name"] == "filterd_consumer_lag_records"


def test_hpa_metric_is_one_filterd_exports() -> None:
    from filterd.metrics import Metrics

    hpa = _docs((HPA_COMPONENT / "hpa.yaml").read_text())[0]
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]
    families = {family.name: family for family in Metrics().registry.collect()}
    assert metric["name"] in families
    # The selector's labels must be labels of that series.
    lag = Metrics()
    lag.consumer_lag.labels(topic="sms.outbound", partition="0").set(1)
    labelled = next(f for f in lag.registry.collect() if f.name == metric["name"])
    assert set(metric["selector"]["matchLabels"]) <= set(labelled.samples[0].labels)


def test_snapshot_publisher_runs_the_documented_build(overlay: list[Doc]) -> None:
    cronjob = _one(overlay, "CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    argv = container["command"][1:] + container["args"]
    parse_cli(argv)
    assert argv[:2] == ["snapshot", "build"]
    # It signs with the private half of the key whose public half the pods check.
    key = argv[argv.index("--sign-key") + 1]
    key_mount = next(m for m in container["volumeMounts"] if key.startswith(m["mountPath"]))
    key_volume = next(v for v in pod["volumes"] if v["name"] == key_mount["name"])
    deployment = _one(overlay, "Deployment")
    pod_key = _secret_paths(deployment)
    assert key_volume["secret"]["secretName"] in pod_key.values()
    out = argv[argv.index("--out") + 1]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == out)
    assert not mount.get("readOnly", False)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert (
        volume["persistentVolumeClaim"]["claimName"]
        == _one(overlay, ("PersistentVolumeClaim"))["metadata"]["name"]
    )
    # Same user as filterd, so the pods can read what it writes.
    deployment_user = _one(overlay, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod["securityContext"]["runAsUser"] == deployment_user["runAsUser"]
    # The publisher must not be selected by the filterd PDB, Service or PodMonitor.
    labels = cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    assert labels.get("app.kubernetes.io/name") != "filterd"
