"""The deployment files in deploy/: parsed and cross-checked against the code they deploy.

Docker and the compose plugin are not available here, so images are checked by reading their
Dockerfiles; systemd units go through `systemd-analyze verify` where it exists. Every command line in
these files is parsed by the real `--help` of the CLI it calls, every metric the dashboard plots must
be exported by the code, and every Triton config must match the zoo package it serves.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import string
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
ZOO = ROOT / "models" / "zoo" / "packages"
TRITON_REPO = DEPLOY / "k8s" / "triton-model-repo"
UNIT = DEPLOY / "systemd" / "edge-agent.service"


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def _load_yaml(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


# --- CLIs: the flags these files pass must exist -------------------------------------------------


@cache
def _help(module: str, command: str) -> str:
    """`python -m MODULE COMMAND --help` of the real CLI."""
    proc = subprocess.run(
        [sys.executable, "-m", module, command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, f"python -m {module} {command} --help failed:\n{proc.stderr}"
    return proc.stdout


def _assert_flags_exist(module: str, argv: list[str]) -> None:
    """argv = [subcommand, flags...]; every --flag must appear in that subcommand's --help."""
    command, *rest = argv
    text = _help(module, command)
    known = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", text))
    used = {a.split("=", 1)[0] for a in rest if a.startswith("--")}
    assert used <= known, f"{module} {command}: unknown flags {sorted(used - known)} (has {sorted(known)})"


# --- every file parses ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert _load_yaml(path), f"{path} holds no YAML document"


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.json")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


# --- Dockerfiles ---------------------------------------------------------------------------------


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, args = pending.partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _dockerfile_instructions(path):
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _global_args(path: Path) -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, value in _dockerfile_instructions(path):
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in value:
            name, default = value.split("=", 1)
            args[name] = default
    return args


DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def test_expected_dockerfiles_exist() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"hub.Dockerfile", "agent-x86.Dockerfile", "agent-jetson.Dockerfile", "mosquitto.Dockerfile"} <= names


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_bases_are_pinned(path: Path) -> None:
    args = _global_args(path)
    stage_names: set[str] = set()
    for keyword, value in _dockerfile_instructions(path):
        if keyword != "FROM":
            continue
        parts = value.split()
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0])
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stage_names.add(parts[2])
        if image in stage_names - {parts[-1]}:
            continue
        assert "@sha256:" in image or ":" in image.rsplit("/", 1)[-1], f"{path.name}: untagged base {image}"
        assert not image.endswith(":latest"), f"{path.name}: base {image} uses latest"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_has_healthcheck_and_entry(path: Path) -> None:
    final = _stages(path)[-1]
    keywords = [k for k, _ in final]
    assert "HEALTHCHECK" in keywords, f"{path.name}: no HEALTHCHECK in the final stage"
    assert "CMD" in keywords or "ENTRYPOINT" in keywords


@pytest.mark.parametrize("name", ["hub.Dockerfile", "agent-x86.Dockerfile", "agent-jetson.Dockerfile"])
def test_python_images_run_as_non_root_and_copy_existing_sources(name: str) -> None:
    path = DOCKER / name
    final = _stages(path)[-1]
    users = [v for k, v in final if k == "USER"]
    assert users, f"{name}: final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{name}: runs as root"
    # Build context is the repository root: every COPY source must exist there and not be ignored.
    ignore = (DOCKER / f"{name}.dockerignore").read_text(encoding="utf-8")
    for keyword, value in _dockerfile_instructions(path):
        if keyword == "COPY" and not value.startswith("--from"):
            for src in value.split()[:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
                assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, f"{name}: {src} ignored"
    # ENTRYPOINT is one of the project's console scripts, and CMD's flags exist.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    entry = json.loads(next(v for k, v in final if k == "ENTRYPOINT"))
    cmd = json.loads(next(v for k, v in final if k == "CMD"))
    assert entry[0] in scripts
    _assert_flags_exist(scripts[entry[0]].split(":")[0].rsplit(".", 1)[0], cmd)


@pytest.mark.parametrize("name", ["hub.Dockerfile", "agent-x86.Dockerfile", "agent-jetson.Dockerfile"])
def test_healthcheck_targets_exposed_port(name: str) -> None:
    final = _stages(DOCKER / name)[-1]
    exposed = {v.split("/")[0] for k, v in final if k == "EXPOSE"}
    check = next(v for k, v in final if k == "HEALTHCHECK")
    ports = set(re.findall(r"127\.0\.0\.1:(\d+)", check))
    assert ports and ports <= exposed, f"{name}: healthcheck ports {ports}, exposed {exposed}"


def test_x86_image_keeps_only_the_gpu_onnxruntime() -> None:
    text = (DOCKER / "agent-x86.Dockerfile").read_text(encoding="utf-8")
    assert ".[gpu]" in text and ".[cpu]" not in text and "! /opt/edgefleet/venv/bin/pip show onnxruntime " in text
    base = _global_args(DOCKER / "agent-x86.Dockerfile")["CUDA_IMAGE"]
    assert base.startswith("nvidia/cuda:12.") and "cudnn" in base and "runtime" in base


def test_jetson_image_is_l4t_with_tensorrt_for_its_python() -> None:
    args = _global_args(DOCKER / "agent-jetson.Dockerfile")
    assert args["L4T_IMAGE"].startswith(("nvcr.io/nvidia/l4t-jetpack:r", "nvcr.io/nvidia/l4t-tensorrt:r"))
    assert args["TRT_OSS_BRANCH"].startswith("release/")
    text = (DOCKER / "agent-jetson.Dockerfile").read_text(encoding="utf-8")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    minor = re.search(r"PYTHON_MINOR_VERSION=(\d+)", text)
    assert minor is not None and requires == f">=3.{minor.group(1)}", "TensorRT bindings must match the venv's Python"
    assert f"python3.{minor.group(1)} -m venv" in text


# --- compose -------------------------------------------------------------------------------------


@cache
def _compose() -> dict[str, Any]:
    (doc,) = _load_yaml(DEPLOY / "compose.yaml")
    assert isinstance(doc, dict)
    return doc


def _interpolate(value: str) -> str:
    """Compose ${VAR:-default} / ${VAR:?err} / ${VAR} with defaults (or a stand-in) applied."""
    return re.sub(r"\$\{(\w+)(?::?[-?]([^}]*))?\}", lambda m: m.group(2) if m.group(0).count(":-") else "x", value)


def test_compose_services_and_images() -> None:
    services = _compose()["services"]
    assert {"hub", "mosquitto", "postgres", "pool"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        image = svc.get("image", "")
        assert not image.endswith(":latest") and (":" in image or "build" in svc), f"{name}: image {image!r}"
        if "build" in svc:
            context = (DEPLOY / svc["build"]["context"]).resolve()
            dockerfile = context / svc["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            assert dockerfile.parent == DOCKER, f"{name}: images are built from deploy/docker"


def test_compose_ports_and_volumes() -> None:
    doc = _compose()
    declared = set(doc.get("volumes") or {})
    host_ports: list[int] = []
    for name, svc in doc["services"].items():
        for port in svc.get("ports", []):
            host, container = str(port).rsplit(":", 1)[-2:] if str(port).count(":") else (port, port)
            assert 0 < int(host) < 65536 and 0 < int(container) < 65536, f"{name}: port {port}"
            host_ports.append(int(host))
        for vol in svc.get("volumes", []):
            source = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
    assert len(host_ports) == len(set(host_ports)), f"host ports collide: {host_ports}"
    assert "postgres" not in {n for n, s in doc["services"].items() if s.get("ports")}, "PostgreSQL stays internal"


def test_compose_commands_use_real_flags() -> None:
    services = _compose()["services"]
    hub = [_interpolate(str(a)) for a in services["hub"]["command"]]
    _assert_flags_exist("cloud_hub", hub)
    assert "--db" not in hub, "the database URL (with its password) must not be on the command line"
    db_url = _interpolate(str(services["hub"]["environment"]["EDGEFLEET_HUB_DB"]))
    assert db_url.startswith("postgresql://") and "@postgres:5432/" in db_url
    pool = [str(a) for a in services["pool"]["command"]]
    _assert_flags_exist("edge_agent", pool)
    assert "--standalone" in pool and pool[pool.index("--host") + 1] == "0.0.0.0"
    # The pool's model dir and trusted key are inside its read-only mount of models/zoo.
    mount = next(v for v in services["pool"]["volumes"] if v.split(":")[1] == "/models/zoo")
    host = (DEPLOY / mount.split(":")[0]).resolve()
    for flag in ("--model-dir", "--trust"):
        inside = Path(pool[pool.index(flag) + 1]).relative_to("/models/zoo")
        assert (host / inside).exists(), f"pool {flag} {inside} not in {host}"


def _mosquitto_conf() -> dict[str, str]:
    conf: dict[str, str] = {}
    for line in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            conf[key] = value.strip()
    return conf


def test_compose_broker_uses_the_deploy_config_and_pki_files(tmp_path: Path) -> None:
    """Run the compose `pki` job's script against the real hub code; the broker config finds its output."""
    services = _compose()["services"]
    mosquitto = services["mosquitto"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in mosquitto["volumes"] if isinstance(v, str)}
    assert (DEPLOY / mounts["/etc/mosquitto/mosquitto.conf"]).resolve() == DEPLOY / "mosquitto" / "mosquitto.conf"
    certs_volume = mounts["/etc/mosquitto/certs"]
    pki = services["pki"]
    pki_mounts = {v.split(":")[1]: v.split(":")[0] for v in pki["volumes"]}
    assert pki_mounts["/broker"] == certs_volume
    assert (DEPLOY / pki_mounts["/acl.template"]).resolve() == DEPLOY / "mosquitto" / "acl.template"

    data, out = tmp_path / "hub", tmp_path / "broker"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # `cloud-hub` is this checkout's CLI; chown is a no-op (not root here).
    (bin_dir / "cloud-hub").write_text(f'#!/bin/sh\nexec {sys.executable} -m cloud_hub "$@"\n', encoding="utf-8")
    (bin_dir / "chown").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    script = pki["command"][0].replace("$$", "$")  # compose's escape for a literal $
    for path, here in (
        ("/var/lib/edgefleet-hub", data),
        ("/broker", out),
        ("/acl.template", DEPLOY / "mosquitto" / "acl.template"),
    ):
        script = script.replace(f" {path}", f" {here}")  # every container path stands after a space
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEFLEET_HUB_DATA_DIR": str(data)}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.update({k: _interpolate(v) for k, v in pki["environment"].items()})
    proc = subprocess.run(
        [*pki["entrypoint"], script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # mosquitto.conf's TLS files and ACL are exactly what the job wrote into the certs volume.
    conf = _mosquitto_conf()
    for key in ("cafile", "certfile", "keyfile"):
        assert conf[key].startswith("/etc/mosquitto/certs/")
        assert (out / Path(conf[key]).name).is_file(), f"{key} {conf[key]} not produced"
    link = "ln -s /etc/mosquitto/certs/edgefleet.acl " + conf["acl_file"]
    assert link in (DOCKER / "mosquitto.Dockerfile").read_text(encoding="utf-8")
    acl = (out / "edgefleet.acl").read_text(encoding="utf-8")
    assert "$" not in acl and "pattern write edgefleet/v1/devices/%u/telemetry" in acl

    from cryptography import x509

    ca = x509.load_pem_x509_certificate((out / "edgefleet-ca.pem").read_bytes())
    broker = x509.load_pem_x509_certificate((out / "broker.pem").read_bytes())
    broker.verify_directly_issued_by(ca)
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mosquitto" in sans.get_values_for_type(x509.DNSName), "the hub reaches the broker as `mosquitto`"
    assert ca == x509.load_pem_x509_certificate((data / "pki" / "ca.pem").read_bytes()), "broker trusts the hub CA"


def test_compose_gpu_override_names_a_real_service() -> None:
    (override,) = _load_yaml(DEPLOY / "compose.gpu.yaml")
    assert set(override["services"]) <= set(_compose()["services"])
    devices = override["services"]["pool"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


# --- Kubernetes ----------------------------------------------------------------------------------


def _by_kind(path: Path) -> dict[str, dict[str, Any]]:
    docs = _load_yaml(path)
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), f"{path.name}: one object per kind expected, got {kinds}"
    return {d["kind"]: d for d in docs}


API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "ServiceAccount": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "InferenceService": "serving.kserve.io/v1beta1",
}


_ROUTE = re.compile(
    r"""\.(?:get|post|put|delete|route|view|add_get|add_post|add_route)\(\s*(?:"[A-Z]+",\s*)?f?["'](/[^"'{]*)["']"""
)


def _routes(package: str) -> set[str]:
    """Literal aiohttp route paths in a package: web.get("/x"), @routes.get("/x"), router.add_get("/x")..."""
    paths: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(_ROUTE, text):
            paths.add(match.group(1))
    return paths


def test_hub_manifest_kinds_and_versions() -> None:
    objs = _by_kind(DEPLOY / "k8s" / "hub.yaml")
    assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget"} <= set(objs)
    for kind, obj in objs.items():
        assert obj["apiVersion"] == API_VERSIONS[kind], kind
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == objs["Namespace"]["metadata"]["name"]


def test_hub_deployment_is_replicated_hardened_and_probed() -> None:
    objs = _by_kind(DEPLOY / "k8s" / "hub.yaml")
    deploy = objs["Deployment"]["spec"]
    assert deploy["replicas"] >= 2
    pod_labels = deploy["template"]["metadata"]["labels"]
    assert deploy["selector"]["matchLabels"].items() <= pod_labels.items()
    pod = deploy["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    hub_routes = _routes("cloud_hub")
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
    _assert_flags_exist("cloud_hub", args)
    assert args[args.index("--port") + 1] == str(ports["https"])
    env = {e["name"]: e for e in hub["env"]}
    assert "--db" not in hub["args"], "the database URL (with its password) must not be on the command line"
    assert env["EDGEFLEET_HUB_DB"]["valueFrom"]["secretKeyRef"], "the database URL comes from a Secret"
    mounts = {m["name"] for c in pod["containers"] + pod["initContainers"] for m in c["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod["volumes"]}


def test_hub_service_and_pdb_select_the_pods() -> None:
    objs = _by_kind(DEPLOY / "k8s" / "hub.yaml")
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
    objs = _by_kind(DEPLOY / "k8s" / "pool-kserve.yaml")
    isvc = objs["InferenceService"]
    assert isvc["apiVersion"] == API_VERSIONS["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton"
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"].split("://")[0] in {"gs", "s3", "pvc", "https", "hf", "oci"}
    limits, requests = model["resources"]["limits"], model["resources"]["requests"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert requests.get("nvidia.com/gpu") == limits["nvidia.com/gpu"], "extended resources: request == limit"


# --- Triton model repository ---------------------------------------------------------------------


def _pbtxt_blocks(text: str, key: str) -> Iterator[str]:
    """Bodies of the `{ ... }` entries of `key [ {...}, {...} ]`."""
    match = re.search(rf"^{key}\s*\[(.*?)^\]", text, re.S | re.M)
    assert match is not None, f"no {key} [...] block"
    yield from re.findall(r"\{(.*?)\}", match.group(1), re.S)


def _pbtxt_field(body: str, name: str) -> str:
    match = re.search(rf"^\s*{name}\s*:\s*(.+?)\s*$", body, re.M)
    assert match is not None, f"no {name}"
    return match.group(1).strip('"')


def _tensors(text: str, key: str) -> list[tuple[str, str, list[int]]]:
    out = []
    for body in _pbtxt_blocks(text, key):
        dims = [int(d) for d in _pbtxt_field(body, "dims").strip("[] ").split(",")]
        out.append((_pbtxt_field(body, "name"), _pbtxt_field(body, "data_type"), dims))
    return out


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


ZOO_MODELS = sorted(p.name for p in ZOO.iterdir() if p.is_dir())


@pytest.mark.parametrize("model", ZOO_MODELS)
def test_triton_config_matches_zoo_manifests(model: str) -> None:
    text = _strip_comments((TRITON_REPO / model / "config.pbtxt").read_text(encoding="utf-8"))
    assert _pbtxt_field(text, "name") == model
    assert _pbtxt_field(text, "platform") == "onnxruntime_onnx"
    assert "dynamic_batching" in text
    manifests = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((ZOO / model).glob("*/manifest.json"))]
    assert manifests
    for manifest in manifests:
        assert manifest["format"] == "onnx" and manifest["model_file"] == "model.onnx"  # Triton's default name
        assert int(_pbtxt_field(text, "max_batch_size")) == manifest["max_batch_size"]
        for key, specs in (("input", manifest["inputs"]), ("output", manifest["outputs"])):
            expected = []
            for spec in specs:
                assert spec["shape"][0] == -1, "Triton batches on a leading dynamic axis"
                expected.append((spec["name"], f"TYPE_{spec['datatype']}", spec["shape"][1:]))
            assert _tensors(text, key) == expected, f"{model} v{manifest['version']} {key}"


@pytest.mark.parametrize("model", ZOO_MODELS)
def test_triton_config_matches_onnx_graph(model: str) -> None:
    import onnxruntime as ort

    text = _strip_comments((TRITON_REPO / model / "config.pbtxt").read_text(encoding="utf-8"))
    for onnx in sorted((ZOO / model).glob("*/model.onnx")):
        session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        for key, args in (("input", session.get_inputs()), ("output", session.get_outputs())):
            graph = [(a.name, [d for d in a.shape[1:]]) for a in args]
            assert [(n, dims) for n, _, dims in _tensors(text, key)] == graph, f"{onnx} {key}"


def test_every_triton_model_is_in_the_zoo() -> None:
    assert sorted(p.name for p in TRITON_REPO.iterdir() if p.is_dir()) == ZOO_MODELS


# --- Prometheus and Grafana ----------------------------------------------------------------------


def test_prometheus_scrapes_agents_and_hub_metrics_paths() -> None:
    (conf,) = _load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    agent_routes, hub_routes = _routes("edge_agent"), _routes("cloud_hub")
    assert "/metrics" in agent_routes, "the agent serves no /metrics"
    assert "/metrics" in hub_routes, "cloud_hub registers no /metrics route; the scrape config expects GET /metrics"
    assert jobs["edgefleet-agent"]["metrics_path"] in agent_routes
    assert jobs["edgefleet-agent"]["scheme"] == "http"
    for name in ("edgefleet-hub", "edgefleet-hub-k8s"):
        assert jobs[name]["metrics_path"] in hub_routes and jobs[name]["scheme"] == "https"
        assert jobs[name]["tls_config"]["ca_file"]
    # The compose pool target is the compose service and its container port.
    pool_cmd = [str(a) for a in _compose()["services"]["pool"]["command"]]
    pool_port = pool_cmd[pool_cmd.index("--port") + 1]
    targets = [t for sc in jobs["edgefleet-agent"]["static_configs"] for t in sc["targets"]]
    assert f"pool:{pool_port}" in targets
    if shutil.which("promtool"):
        proc = subprocess.run(
            ["promtool", "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


_METRIC_CLASSES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_count", "_sum", "_created"),
    "Summary": ("", "_count", "_sum", "_created"),
    "Info": ("_info",),
    "Enum": ("",),
    "CounterMetricFamily": ("_total",),
    "GaugeMetricFamily": ("",),
    "HistogramMetricFamily": ("_bucket", "_count", "_sum"),
    "SummaryMetricFamily": ("_count", "_sum", ""),
    "InfoMetricFamily": ("_info",),
}


def exported_metric_names() -> set[str]:
    """Series names the agent and hub export: prometheus_client constructors found in their source."""
    names: set[str] = set()
    for package in ("edge_agent", "cloud_hub"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                first = node.args[0]
                if (
                    func not in _METRIC_CLASSES
                    or not isinstance(first, ast.Constant)
                    or not isinstance(first.value, str)
                ):
                    continue
                kwargs = {
                    k.arg: k.value.value
                    for k in node.keywords
                    if isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)
                }
                base = "_".join(p for p in (kwargs.get("namespace"), kwargs.get("subsystem"), first.value) if p)
                if func.startswith("Counter"):
                    base = base.removesuffix("_total")
                names.update(base + suffix for suffix in _METRIC_CLASSES[func])
    return names


_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "le",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside {...}, [...], strings, grouping clauses."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text):
        word = match.group(1)
        if word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names


def test_promql_metric_names_parser() -> None:
    expr = 'histogram_quantile(0.99, sum by (model, le) (rate(x_bucket{model=~"$m"}[$__rate_interval]))) / y_total'
    assert promql_metric_names(expr) == {"x_bucket", "y_total"}
    assert promql_metric_names("label_values(edgefleet_requests_total, model)") == {"edgefleet_requests_total", "model"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "edgefleet-dashboard.json").read_text(encoding="utf-8"))
    return data


def _dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable's metric."""
    out = [(p["title"], t["expr"]) for p in _dashboard()["panels"] for t in p.get("targets", [])]
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((\w+),\s*\w+\)", var["definition"])
            assert inner is not None, var["name"]
            out.append((f"variable {var['name']}", inner.group(1)))
    return out


def test_dashboard_layout() -> None:
    dash = _dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] and dash["title"]
    for panel in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]


def test_dashboard_plots_only_exported_metrics() -> None:
    exported = exported_metric_names()
    assert exported, "no prometheus_client metrics found in edge_agent/ or cloud_hub/"
    missing = {}
    for where, expr in _dashboard_queries():
        unknown = {m for m in promql_metric_names(expr) if m.startswith("edgefleet_")} - exported
        if unknown:
            missing[where] = sorted(unknown)
    assert not missing, f"dashboard metrics not exported by edge_agent/cloud_hub: {missing}"
    used = {m for _, e in _dashboard_queries() for m in promql_metric_names(e)}
    assert all(m.startswith("edgefleet_") or m in {"model", "instance"} for m in used), used


# --- systemd -------------------------------------------------------------------------------------


def _unit_entries(path: Path) -> list[tuple[str, str, str]]:
    entries, section = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def test_unit_is_hardened() -> None:
    svc: dict[str, list[str]] = {}
    for section, key, value in _unit_entries(UNIT):
        if section == "Service":
            svc.setdefault(key, []).append(value)
    one = {k: v[-1] for k, v in svc.items()}
    expected = {
        "User": "edgefleet",
        "StateDirectory": "edgefleet",
        "ConfigurationDirectory": "edgefleet",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
        "Restart": "on-failure",
        "PrivateDevices": "no",
        "DevicePolicy": "closed",
    }
    for key, value in expected.items():
        assert one.get(key) == value, f"{key}={one.get(key)!r}, expected {value!r}"
    assert set(one["RestrictAddressFamilies"].split()) <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert "RestartSec" in one and "TimeoutStopSec" in one
    allowed = " ".join(svc["DeviceAllow"])
    assert "nvidia" in allowed and "nvhost" in allowed and "/dev/nvmap" in allowed
    # The user the unit runs as is the one the sysusers file creates, in the group of the Jetson GPU nodes.
    sysusers = (DEPLOY / "systemd" / "edgefleet-sysusers.conf").read_text(encoding="utf-8")
    assert re.search(r"^u\s+edgefleet\s", sysusers, re.M) and re.search(r"^m\s+edgefleet\s+video", sysusers, re.M)
    assert one["SupplementaryGroups"] == "video"


def test_unit_type_matches_sd_notify_support() -> None:
    """Type=notify and a watchdog only if the agent actually talks to systemd."""
    one = {k: v for s, k, v in _unit_entries(UNIT) if s == "Service"}
    notifies = any(
        re.search(r"sd_notify|NOTIFY_SOCKET|WATCHDOG_USEC", p.read_text(encoding="utf-8"))
        for p in (ROOT / "edge_agent").rglob("*.py")
    )
    if notifies:
        assert one["Type"] == "notify", "the agent calls sd_notify: use Type=notify (and WatchdogSec if it pings)"
    else:
        assert one["Type"] == "simple" and "WatchdogSec" not in one


def test_unit_execstart_uses_real_flags() -> None:
    exec_start = next(v for s, k, v in _unit_entries(UNIT) if s == "Service" and k == "ExecStart")
    binary, *argv = exec_start.split()
    assert binary.endswith("/edge-agent") and binary.startswith("/")
    _assert_flags_exist("edge_agent", argv)
    assert argv[argv.index("--config") + 1].startswith("/etc/edgefleet/"), "config lives in ConfigurationDirectory"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on a copy whose ExecStart binary exists here (the venv is not /opt)."""
    text = UNIT.read_text(encoding="utf-8")
    binary = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert binary is not None
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={binary.group(1)}", "ExecStart=/bin/true"), encoding="utf-8")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr
    # The only complaint about the original is the binary that is not installed on this machine.
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    allowed = f"Command {binary.group(1)} is not executable"
    assert all(allowed in line for line in lines), lines


# --- the compose ACL rendering matches the rig's --------------------------------------------------


def test_acl_template_has_only_the_prefix_placeholder() -> None:
    template = string.Template((DEPLOY / "mosquitto" / "acl.template").read_text(encoding="utf-8"))
    assert {m.group("named") or m.group("braced") for m in template.pattern.finditer(template.template)} - {None} == {
        "prefix"
    }
