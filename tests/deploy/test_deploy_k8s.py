"""Kubernetes manifests (hub, KServe pool) and the Triton model repository match the code and the zoo."""

from __future__ import annotations

import json
import re

import pytest
from deploy_support import (
    API_VERSIONS,
    DEPLOY,
    TRITON_REPO,
    ZOO,
    ZOO_MODELS,
    assert_flags_exist,
    by_kind,
    pbtxt_field,
    promql_metric_names,
    routes,
    strip_comments,
    tensors,
)


def test_hub_manifest_kinds_and_versions() -> None:
    objs = by_kind(DEPLOY / "k8s" / "hub.yaml")
    assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget"} <= set(objs)
    for kind, obj in objs.items():
        assert obj["apiVersion"] == API_VERSIONS[kind], kind
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == objs["Namespace"]["metadata"]["name"]


def test_hub_deployment_is_replicated_hardened_and_probed() -> None:
    objs = by_kind(DEPLOY / "k8s" / "hub.yaml")
    deploy = objs["Deployment"]["spec"]
    assert deploy["replicas"] >= 2
    pod_labels = deploy["template"]["metadata"]["labels"]
    assert deploy["selector"]["matchLabels"].items() <= pod_labels.items()
    pod = deploy["template"]["spec"]
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


def test_hub_service_and_pdb_select_the_pods() -> None:
    objs = by_kind(DEPLOY / "k8s" / "hub.yaml")
    deploy = objs["Deployment"]["spec"]
    labels = deploy["template"]["metadata"]["labels"]
    service = objs["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    container_ports = {p["name"] for c in deploy["template"]["spec"]["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= container_ports
    pdb = objs["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["minAvailable"] < deploy["replicas"], "the PDB must let one pod drain at a time"


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
