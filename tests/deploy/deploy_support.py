"""Helpers of the deployment-file tests: paths, parsers for Dockerfiles/compose/manifests, real CLI flags."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


DEPLOY = ROOT / "deploy"


DOCKER = DEPLOY / "docker"


ZOO = ROOT / "models" / "zoo" / "packages"


TRITON_REPO = DEPLOY / "k8s" / "triton-model-repo"


UNIT = DEPLOY / "systemd" / "edge-agent.service"


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def load_yaml(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


@cache
def cli_help(module: str, command: str) -> str:
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


def assert_flags_exist(module: str, argv: list[str]) -> None:
    """argv = [subcommand, flags...]; every --flag must appear in that subcommand's --help."""
    command, *rest = argv
    text = cli_help(module, command)
    known = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", text))
    used = {a.split("=", 1)[0] for a in rest if a.startswith("--")}
    assert used <= known, f"{module} {command}: unknown flags {sorted(used - known)} (has {sorted(known)})"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
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


def stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in dockerfile_instructions(path):
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def global_args(path: Path) -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, value in dockerfile_instructions(path):
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in value:
            name, default = value.split("=", 1)
            args[name] = default
    return args


DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


@cache
def compose() -> dict[str, Any]:
    (doc,) = load_yaml(DEPLOY / "compose.yaml")
    assert isinstance(doc, dict)
    return doc


def interpolate(value: str) -> str:
    """Compose ${VAR:-default} / ${VAR:?err} / ${VAR} with defaults (or a stand-in) applied."""
    return re.sub(r"\$\{(\w+)(?::?[-?]([^}]*))?\}", lambda m: m.group(2) if m.group(0).count(":-") else "x", value)


def mosquitto_conf() -> dict[str, str]:
    conf: dict[str, str] = {}
    for line in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            conf[key] = value.strip()
    return conf


def by_kind(path: Path) -> dict[str, dict[str, Any]]:
    docs = load_yaml(path)
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), f"{path.name}: one object per kind expected, got {kinds}"
    return {d["kind"]: d for d in docs}


API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "ServiceAccount": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "InferenceService": "serving.kserve.io/v1beta1",
}


ROUTE = re.compile(
    r"""\.(?:get|post|put|delete|route|view|add_get|add_post|add_route)\(\s*(?:"[A-Z]+",\s*)?f?["'](/[^"'{]*)["']"""
)


def routes(package: str) -> set[str]:
    """Literal aiohttp route paths in a package: web.get("/x"), @routes.get("/x"), router.add_get("/x")..."""
    paths: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(ROUTE, text):
            paths.add(match.group(1))
    return paths


def pbtxt_blocks(text: str, key: str) -> Iterator[str]:
    """Bodies of the `{ ... }` entries of `key [ {...}, {...} ]`."""
    match = re.search(rf"^{key}\s*\[(.*?)^\]", text, re.S | re.M)
    assert match is not None, f"no {key} [...] block"
    yield from re.findall(r"\{(.*?)\}", match.group(1), re.S)


def pbtxt_field(body: str, name: str) -> str:
    match = re.search(rf"^\s*{name}\s*:\s*(.+?)\s*$", body, re.M)
    assert match is not None, f"no {name}"
    return match.group(1).strip('"')


def tensors(text: str, key: str) -> list[tuple[str, str, list[int]]]:
    out = []
    for body in pbtxt_blocks(text, key):
        dims = [int(d) for d in pbtxt_field(body, "dims").strip("[] ").split(",")]
        out.append((pbtxt_field(body, "name"), pbtxt_field(body, "data_type"), dims))
    return out


def strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


ZOO_MODELS = sorted(p.name for p in ZOO.iterdir() if p.is_dir())


METRIC_CLASSES = {
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
                    func not in METRIC_CLASSES
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
                names.update(base + suffix for suffix in METRIC_CLASSES[func])
    return names


PROMQL_WORDS = {
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
        if word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "edgefleet-dashboard.json").read_text(encoding="utf-8"))
    return data


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable's metric."""
    out = [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((\w+)(?:\{[^}]*\})?,\s*\w+\)", var["definition"])
            assert inner is not None, var["name"]
            out.append((f"variable {var['name']}", inner.group(1)))
    return out


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
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
