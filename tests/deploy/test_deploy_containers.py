"""Every deployment file parses; Dockerfiles and the compose file match the code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_support import (
    DEPLOY,
    DOCKER,
    DOCKERFILES,
    ROOT,
    assert_flags_exist,
    compose,
    dockerfile_instructions,
    global_args,
    interpolate,
    load_yaml,
    mosquitto_conf,
    stages,
    yaml_files,
)


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert load_yaml(path), f"{path} holds no YAML document"


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.json")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


def test_expected_dockerfiles_exist() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"hub.Dockerfile", "agent-x86.Dockerfile", "agent-jetson.Dockerfile", "mosquitto.Dockerfile"} <= names


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_bases_are_pinned(path: Path) -> None:
    args = global_args(path)
    stage_names: set[str] = set()
    for keyword, value in dockerfile_instructions(path):
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
    final = stages(path)[-1]
    keywords = [k for k, _ in final]
    assert "HEALTHCHECK" in keywords, f"{path.name}: no HEALTHCHECK in the final stage"
    assert "CMD" in keywords or "ENTRYPOINT" in keywords


@pytest.mark.parametrize("name", ["hub.Dockerfile", "agent-x86.Dockerfile", "agent-jetson.Dockerfile"])
def test_python_images_run_as_non_root_and_copy_existing_sources(name: str) -> None:
    path = DOCKER / name
    final = stages(path)[-1]
    users = [v for k, v in final if k == "USER"]
    assert users, f"{name}: final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{name}: runs as root"
    # Build context is the repository root: every COPY source must exist there and not be ignored.
    ignore = (DOCKER / f"{name}.dockerignore").read_text(encoding="utf-8")
    for keyword, value in dockerfile_instructions(path):
        if keyword == "COPY" and not value.startswith("--from"):
            for src in value.split()[:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
                assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, f"{name}: {src} ignored"
    # ENTRYPOINT is one of the project's console scripts, and CMD's flags exist.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    entry = json.loads(next(v for k, v in final if k == "ENTRYPOINT"))
    cmd = json.loads(next(v for k, v in final if k == "CMD"))
    assert entry[0] in scripts
    assert_flags_exist(scripts[entry[0]].split(":")[0].rsplit(".", 1)[0], cmd)


@pytest.mark.parametrize("name", ["hub.Dockerfile", "agent-x86.Dockerfile", "agent-jetson.Dockerfile"])
def test_healthcheck_targets_exposed_port(name: str) -> None:
    final = stages(DOCKER / name)[-1]
    exposed = {v.split("/")[0] for k, v in final if k == "EXPOSE"}
    check = next(v for k, v in final if k == "HEALTHCHECK")
    ports = set(re.findall(r"127\.0\.0\.1:(\d+)", check))
    assert ports and ports <= exposed, f"{name}: healthcheck ports {ports}, exposed {exposed}"


def test_x86_image_keeps_only_the_gpu_onnxruntime() -> None:
    text = (DOCKER / "agent-x86.Dockerfile").read_text(encoding="utf-8")
    assert ".[gpu]" in text and ".[cpu]" not in text and "! /opt/edgefleet/venv/bin/pip show onnxruntime " in text
    base = global_args(DOCKER / "agent-x86.Dockerfile")["CUDA_IMAGE"]
    assert base.startswith("nvidia/cuda:12.") and "cudnn" in base and "runtime" in base


def test_jetson_image_is_l4t_with_tensorrt_for_its_python() -> None:
    args = global_args(DOCKER / "agent-jetson.Dockerfile")
    assert args["L4T_IMAGE"].startswith(("nvcr.io/nvidia/l4t-jetpack:r", "nvcr.io/nvidia/l4t-tensorrt:r"))
    assert args["TRT_OSS_BRANCH"].startswith("release/")
    text = (DOCKER / "agent-jetson.Dockerfile").read_text(encoding="utf-8")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    minor = re.search(r"PYTHON_MINOR_VERSION=(\d+)", text)
    assert minor is not None and requires == f">=3.{minor.group(1)}", "TensorRT bindings must match the venv's Python"
    assert f"python3.{minor.group(1)} -m venv" in text


def test_compose_services_and_images() -> None:
    services = compose()["services"]
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
    doc = compose()
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
    services = compose()["services"]
    hub = [interpolate(str(a)) for a in services["hub"]["command"]]
    assert_flags_exist("cloud_hub", hub)
    assert "--db" not in hub, "the database URL (with its password) must not be on the command line"
    db_url = interpolate(str(services["hub"]["environment"]["EDGEFLEET_HUB_DB"]))
    assert db_url.startswith("postgresql://") and "@postgres:5432/" in db_url
    pool = [str(a) for a in services["pool"]["command"]]
    assert_flags_exist("edge_agent", pool)
    assert "--standalone" in pool and pool[pool.index("--host") + 1] == "0.0.0.0"
    # The pool's model dir and trusted key are inside its read-only mount of models/zoo.
    mount = next(v for v in services["pool"]["volumes"] if v.split(":")[1] == "/models/zoo")
    host = (DEPLOY / mount.split(":")[0]).resolve()
    for flag in ("--model-dir", "--trust"):
        inside = Path(pool[pool.index(flag) + 1]).relative_to("/models/zoo")
        assert (host / inside).exists(), f"pool {flag} {inside} not in {host}"


def test_compose_broker_uses_the_deploy_config_and_pki_files(tmp_path: Path) -> None:
    """Run the compose `pki` job's script against the real hub code; the broker config finds its output."""
    services = compose()["services"]
    mosquitto = services["mosquitto"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in mosquitto["volumes"] if isinstance(v, str)}
    assert (DEPLOY / mounts["/etc/mosquitto/mosquitto.conf"]).resolve() == DEPLOY / "mosquitto" / "mosquitto.conf"
    certs_volume = mounts["/etc/mosquitto/certs"]
    pki = services["pki"]
    pki_mounts = {v.split(":")[1]: v.split(":")[0] for v in pki["volumes"]}
    assert pki_mounts["/broker"] == certs_volume
    assert (DEPLOY / pki_mounts["/acl.template"]).resolve() == DEPLOY / "mosquitto" / "acl.template"

    data, out, broker_data = tmp_path / "hub", tmp_path / "broker", tmp_path / "mosquitto-data"
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
        ("/mosquitto-data", broker_data),
        ("/acl.template", DEPLOY / "mosquitto" / "acl.template"),
    ):
        script = script.replace(f" {path}", f" {here}")  # every container path stands after a space
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEFLEET_HUB_DATA_DIR": str(data)}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.update({k: interpolate(v) for k, v in pki["environment"].items()})
    proc = subprocess.run(
        [*pki["entrypoint"], script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # mosquitto.conf's TLS files and ACL are exactly what the job wrote into the certs volume.
    conf = mosquitto_conf()
    for key in ("cafile", "certfile", "keyfile"):
        assert conf[key].startswith("/etc/mosquitto/certs/")
        assert (out / Path(conf[key]).name).is_file(), f"{key} {conf[key]} not produced"
    assert (out / Path(conf["crlfile"]).name).is_file(), "the CRL (on by default) was not produced"
    # The dynamic-security registry (the shipped authoriser) is where mosquitto's data volume is mounted,
    # seeded by the job with the hub's role and nothing else; a second run keeps it (mosquitto owns it then).
    registry = Path(conf["plugin_opt_config_file"])
    assert registry.parent == Path("/var/lib/mosquitto") and Path(conf["plugin"]).name.startswith("mosquitto_dyn")
    assert mounts["/var/lib/mosquitto"] == pki_mounts["/mosquitto-data"], "the job seeds the broker's data volume"
    seed = json.loads((broker_data / registry.name).read_text(encoding="utf-8"))
    assert [c["username"] for c in seed["clients"]] == ["edgefleet-hub"]
    assert not any(seed["defaultACLAccess"][k] for k in ("publishClientSend", "publishClientReceive", "subscribe"))
    (broker_data / registry.name).write_text('{"kept": true}', encoding="utf-8")
    again = subprocess.run(
        [*pki["entrypoint"], script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert again.returncode == 0 and json.loads((broker_data / registry.name).read_text()) == {"kept": True}
    # The acl_file alternative: rendered beside the certificates, where the image's link points.
    assert "acl_file" not in conf, "acl_file next to the plugin would grant every SUBSCRIBE"
    link = "ln -s /etc/mosquitto/certs/edgefleet.acl /etc/mosquitto/edgefleet.acl"
    assert link in (DOCKER / "mosquitto.Dockerfile").read_text(encoding="utf-8")
    assert "# acl_file /etc/mosquitto/edgefleet.acl" in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
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
    (override,) = load_yaml(DEPLOY / "compose.gpu.yaml")
    assert set(override["services"]) <= set(compose()["services"])
    devices = override["services"]["pool"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
