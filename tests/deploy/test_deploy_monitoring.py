"""The Prometheus config and the Grafana dashboard scrape and plot what the code exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from deploy_support import (
    DEPLOY,
    compose,
    dashboard,
    dashboard_queries,
    exported_metric_names,
    load_yaml,
    promql_metric_names,
    routes,
)


def _promtool_check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(path)], capture_output=True, text=True, check=False
    )


def test_prometheus_scrapes_agents_and_hub_metrics_paths(tmp_path: Path) -> None:
    (conf,) = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    agent_routes, hub_routes = routes("edge_agent"), routes("cloud_hub")
    assert "/metrics" in agent_routes, "the agent serves no /metrics"
    assert "/metrics" in hub_routes, "cloud_hub registers no /metrics route; the scrape config expects GET /metrics"
    assert jobs["edgefleet-agent"]["metrics_path"] in agent_routes
    assert jobs["edgefleet-agent"]["scheme"] == "http"
    for name in ("edgefleet-hub", "edgefleet-hub-k8s"):
        assert jobs[name]["metrics_path"] in hub_routes and jobs[name]["scheme"] == "https"
        assert jobs[name]["tls_config"]["ca_file"]
    # The compose pool target is the compose service and its container port.
    pool_cmd = [str(a) for a in compose()["services"]["pool"]["command"]]
    pool_port = pool_cmd[pool_cmd.index("--port") + 1]
    targets = [t for sc in jobs["edgefleet-agent"]["static_configs"] for t in sc["targets"]]
    assert f"pool:{pool_port}" in targets
    if shutil.which("promtool"):
        path = DEPLOY / "prometheus" / "prometheus.yml"
        proc = _promtool_check_config(path)
        if "field kubernetes_sd_configs not found" in proc.stdout + proc.stderr:
            # Debian's prometheus package is built without Kubernetes discovery: check the rest of the config.
            kept = [j for j in conf["scrape_configs"] if "kubernetes_sd_configs" not in j]
            assert kept != conf["scrape_configs"]
            path = tmp_path / "prometheus-no-k8s.yml"
            path.write_text(yaml.safe_dump({**conf, "scrape_configs": kept}))
            proc = _promtool_check_config(path)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promql_metric_names_parser() -> None:
    expr = 'histogram_quantile(0.99, sum by (model, le) (rate(x_bucket{model=~"$m"}[$__rate_interval]))) / y_total'
    assert promql_metric_names(expr) == {"x_bucket", "y_total"}
    assert promql_metric_names("label_values(edgefleet_requests_total, model)") == {"edgefleet_requests_total", "model"}


def test_dashboard_layout() -> None:
    dash = dashboard()
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
    for where, expr in dashboard_queries():
        unknown = {m for m in promql_metric_names(expr) if m.startswith("edgefleet_")} - exported
        if unknown:
            missing[where] = sorted(unknown)
    assert not missing, f"dashboard metrics not exported by edge_agent/cloud_hub: {missing}"
    used = {m for _, e in dashboard_queries() for m in promql_metric_names(e)}
    assert all(m.startswith("edgefleet_") or m in {"model", "instance", "name"} for m in used), used
