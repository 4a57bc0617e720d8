"""Kubernetes manifests (hub, KServe pool) and the Triton model repository match the code and the zoo."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from deploy_support import (
    API_VERSIONS,
    DEPLOY,
    TRITON_REPO,
    ZOO,
    ZOO_MODELS,
    assert_flags_exist,
    by_kind,
    load_yaml,
    pbtxt_field,
    promql_metric_names,
    routes,
    strip_comments,
    tensors,
)

from cloud_hub.broker import dynsec
from cloud_hub.cli import build_parser, main
from cloud_hub.cli.serve import config_from_args
from cloud_hub.config import HubConfig
from cloud_hub.pki import HubIdentity
from cloud_hub.pki.identity import replica_cn
from deploy.local.broker_config import render_acl

HUB_YAML = DEPLOY / "k8s" / "hub.yaml"


def hub_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """hub.yaml's objects by (kind, name): it holds two Services (the StatefulSet's headless one)."""
    docs = load_yaml(HUB_YAML)
    objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(objs) == len(docs), "two objects share a kind and name"
    return objs


def one(kind: str) -> dict[str, Any]:
    """The only object of `kind` in hub.yaml."""
    (obj,) = [o for (k, _), o in hub_objects().items() if k == kind]
    return obj


def test_hub_manifest_kinds_and_versions() -> None:
    objs = hub_objects()
    kinds = {kind for kind, _ in objs}
    assert {"Namespace", "StatefulSet", "Service", "PodDisruptionBudget"} <= kinds
    assert "Deployment" not in kinds, "replicas of a Deployment have no stable names to be MQTT identities"
    namespace = one("Namespace")["metadata"]["name"]
    for (kind, _), obj in objs.items():
        assert obj["apiVersion"] == API_VERSIONS[kind], kind
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == namespace


def test_hub_statefulset_is_replicated_hardened_and_probed() -> None:
    sts = one("StatefulSet")["spec"]
    assert sts["replicas"] >= 2
    pod_labels = sts["template"]["metadata"]["labels"]
    assert sts["selector"]["matchLabels"].items() <= pod_labels.items()
    pod = sts["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    hub_routes = routes("cloud_hub")
    health = sorted(p for p in hub_routes if "health" in p)
    assert health, "cloud_hub registers no health route; the probes expect GET /healthz"
    for container in pod.get("initContainers", []) + pod["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]
    (hub,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in hub["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = hub[probe]["httpGet"]
        assert get["path"] in health, f"{probe} path {get['path']} is not a hub route ({health})"
        assert get["port"] in ports and get["scheme"] == "HTTPS"
    args = [re.sub(r"\$\((\w+)\)", "x", a) for a in hub["args"]]
    assert_flags_exist("cloud_hub", args)
    assert args[args.index("--port") + 1] == str(ports["https"])
    env = {e["name"]: e for e in hub["env"]}
    assert "--db" not in hub["args"], "the database URL (with its password) must not be on the command line"
    assert env["EDGEFLEET_HUB_DB"]["valueFrom"]["secretKeyRef"], "the database URL comes from a Secret"
    mounts = {m["name"] for c in pod["containers"] + pod["initContainers"] for m in c["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod["volumes"]}


def _pod_config(ordinal: int, data_dir: Path) -> HubConfig:
    """The HubConfig that pod `ordinal`'s real `cloud-hub serve` arguments make, $(VAR)s expanded as the
    kubelet does: from the ConfigMap, a literal value, or the pod's own name (downward API)."""
    sts = one("StatefulSet")
    (hub,) = sts["spec"]["template"]["spec"]["containers"]
    config_map = one("ConfigMap")["data"]
    values: dict[str, str] = {}
    for var in hub["env"]:
        source = var.get("valueFrom", {})
        if "value" in var:
            values[var["name"]] = var["value"]
        elif "configMapKeyRef" in source:
            values[var["name"]] = config_map[source["configMapKeyRef"]["key"]]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            values[var["name"]] = f"{sts['metadata']['name']}-{ordinal}"
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m[1]], a) for a in hub["args"]]
    return config_from_args(build_parser().parse_args(["--data-dir", str(data_dir), *args]))


def _documented_broker_identities() -> list[str]:
    """The `--hub` identities of the `cloud-hub pki broker-dynsec` line in hub.yaml's header."""
    header = "".join(line.lstrip("# ").rstrip("\\") for line in HUB_YAML.read_text().splitlines()
                     if line.startswith("#"))  # fmt: skip
    command = header[header.index("cloud-hub pki broker-dynsec") :].split("(")[0]
    return re.findall(r"--hub (\S+)", command)


def test_each_hub_replica_has_its_own_mqtt_identity_listed_on_the_broker(tmp_path: Path) -> None:
    sts = one("StatefulSet")
    replicas = sts["spec"]["replicas"]
    configs = [_pod_config(i, tmp_path / f"pod-{i}") for i in range(replicas)]
    identities = [c.mqtt_identity for c in configs]
    assert identities == [f"edgefleet-hub-{i}" for i in range(replicas)]  # the pod names
    assert {c.broker_authz for c in configs} == {"dynsec"}, "the shipped broker config runs the plugin"
    for config in configs:
        # The CN a replica presents is its identity as configured (not rewritten by a client-id slot), and
        # the client certificate it issues itself at start carries it.
        assert replica_cn(config.data_dir, config.mqtt_identity, "any-client-id") == config.mqtt_identity
        identity = HubIdentity.bootstrap(config.data_dir, None, config.mqtt_identity)
        cert = x509.load_pem_x509_certificate(identity.paths.hub_cert.read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == config.mqtt_identity
    # The broker lists exactly these identities, each with the hub's role (the documented seed command).
    assert _documented_broker_identities() == identities
    seed_file = tmp_path / "dynamic-security.json"
    argv = ["pki", "broker-dynsec", "--out", str(seed_file)]
    assert main([*argv, *(a for i in identities for a in ("--hub", i))]) == 0
    seed = json.loads(seed_file.read_text())
    assert {c["username"]: c["roles"] for c in seed["clients"]} == {
        i: [{"rolename": dynsec.HUB_ROLE}] for i in identities
    }
    # ... and, for the acl_file alternative, one hub block each.
    acl = render_acl(tmp_path / "acl", hub_usernames=identities).read_text()
    assert [line for line in acl.splitlines() if line.startswith("user ")] == [f"user {i}" for i in identities]


def test_hub_services_and_pdb_select_the_pods() -> None:
    sts = one("StatefulSet")["spec"]
    labels = sts["template"]["metadata"]["labels"]
    container_ports = {p["name"] for c in sts["template"]["spec"]["containers"] for p in c["ports"]}
    services = {name: obj["spec"] for (kind, name), obj in hub_objects().items() if kind == "Service"}
    assert services[sts["serviceName"]].get("clusterIP") == "None", "a StatefulSet's governing Service is headless"
    for spec in services.values():
        assert spec["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in spec["ports"]} <= container_ports
    pdb = one("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["minAvailable"] < sts["replicas"], "the PDB must let one pod drain at a time"


def test_pool_inference_service_is_triton_v2_on_a_gpu() -> None:
    objs = by_kind(DEPLOY / "k8s" / "pool-kserve.yaml")
    isvc = objs["InferenceService"]
    assert isvc["apiVersion"] == API_VERSIONS["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton"
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"].split("://")[0] in {"gs", "s3", "pvc", "https", "hf", "oci"}
    limits, requests = model["resources"]["limits"], model["resources"]["requests"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert requests.get("nvidia.com/gpu") == limits["nvidia.com/gpu"], "extended resources: request == limit"


@pytest.mark.parametrize("model", ZOO_MODELS)
def test_triton_config_matches_zoo_manifests(model: str) -> None:
    text = strip_comments((TRITON_REPO / model / "config.pbtxt").read_text(encoding="utf-8"))
    assert pbtxt_field(text, "name") == model
    assert pbtxt_field(text, "platform") == "onnxruntime_onnx"
    assert "dynamic_batching" in text
    manifests = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((ZOO / model).glob("*/manifest.json"))]
    assert manifests
    for manifest in manifests:
        assert manifest["format"] == "onnx" and manifest["model_file"] == "model.onnx"  # Triton's default name
        assert int(pbtxt_field(text, "max_batch_size")) == manifest["max_batch_size"]
        for key, specs in (("input", manifest["inputs"]), ("output", manifest["outputs"])):
            expected = []
            for spec in specs:
                assert spec["shape"][0] == -1, "Triton batches on a leading dynamic axis"
                triton_type = "STRING" if spec["datatype"] == "BYTES" else spec["datatype"]  # Triton's name
                expected.append((spec["name"], f"TYPE_{triton_type}", spec["shape"][1:]))
            assert tensors(text, key) == expected, f"{model} v{manifest['version']} {key}"


@pytest.mark.parametrize("model", ZOO_MODELS)
def test_triton_config_matches_onnx_graph(model: str) -> None:
    import onnxruntime as ort

    text = strip_comments((TRITON_REPO / model / "config.pbtxt").read_text(encoding="utf-8"))
    for onnx in sorted((ZOO / model).glob("*/model.onnx")):
        session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        for key, args in (("input", session.get_inputs()), ("output", session.get_outputs())):
            graph = [(a.name, [d for d in a.shape[1:]]) for a in args]
            assert [(n, dims) for n, _, dims in tensors(text, key)] == graph, f"{onnx} {key}"


def test_every_triton_model_is_in_the_zoo() -> None:
    assert sorted(p.name for p in TRITON_REPO.iterdir() if p.is_dir()) == ZOO_MODELS


def _exported_by_hub() -> set[str]:
    """Series names a real HubMetrics renders, pool demand included (the collector is computed at scrape time)."""
    from prometheus_client.parser import text_string_to_metric_families

    from cloud_hub.metrics import HubMetrics

    metrics = HubMetrics()
    metrics.pool_demand(lambda: {("edgefleet-pool", "tiny-cnn"): (10.0, 40.0)})
    return {s.name for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}


def test_pool_scaled_object_scales_the_inference_service_from_the_hubs_pool_demand() -> None:
    from cloud_hub.metrics import POOL_OFFERED_REQUESTS, POOL_OFFERED_ROWS

    isvc = by_kind(DEPLOY / "k8s" / "pool-kserve.yaml")["InferenceService"]
    scaled = by_kind(DEPLOY / "k8s" / "pool-keda.yaml")["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["namespace"] == isvc["metadata"]["namespace"]
    spec, predictor = scaled["spec"], isvc["spec"]["predictor"]
    # KServe's RawDeployment predictor Deployment is <isvc>-predictor; KServe must not run an HPA of its own.
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{isvc['metadata']['name']}-predictor",
    }
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"
    assert 1 <= spec["minReplicaCount"] == predictor["minReplicas"], "a pool never scales to zero"
    assert spec["maxReplicaCount"] == predictor["maxReplicas"] > spec["minReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"].startswith(("http://", "https://"))
    assert float(meta["threshold"]) > 0
    query = meta["query"]
    names = promql_metric_names(query)
    assert names and names <= {POOL_OFFERED_REQUESTS, POOL_OFFERED_ROWS}, names
    assert names <= _exported_by_hub(), "the query names a metric the hub does not export"
    pool = re.search(r'pool="([^"]+)"', query)
    assert pool is not None and pool[1] == isvc["metadata"]["name"], "the devices name the pool after the service"
    assert query.startswith("sum("), "sum over hub replicas: each exports the devices it ingests"
