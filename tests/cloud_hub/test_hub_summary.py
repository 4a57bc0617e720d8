"""The telemetry summary: typed, one encode/decode pair, and the JSON keys of the operator API unchanged."""

from __future__ import annotations

import json

from devices_support import load_report

from cloud_hub.cli import render
from cloud_hub.store.summary import PipelineSummary, decode_summary, encode_summary, summarize
from protocols.messages import LoadReport

WIRE = {
    "detect": {
        "model": "tiny-cnn",
        "version": "2",
        "rps": 5.0,
        "p50_ms": 4.0,
        "p99_ms": 12.5,
        "errors": 0,
        "local": 50,
        "cloud": 0,
        "rejected": 0,
        "expired": 0,
    }
}


def test_summary_encodes_to_the_json_the_operator_api_serves() -> None:
    summary = summarize(LoadReport.model_validate_json(load_report("dev-1", 1)))
    text = encode_summary(summary)
    assert json.loads(text) == WIRE
    assert list(json.loads(text)["detect"]) == list(WIRE["detect"])  # key order too
    assert decode_summary(json.loads(text)) == summary
    assert summary["detect"].requests == 50


def test_decode_reads_partial_and_null_figures_as_absent_or_zero() -> None:
    decoded = decode_summary({"detect": {"p99_ms": 18.5, "local": 3, "errors": None}})
    assert decoded == {"detect": PipelineSummary(p99_ms=18.5, local=3)}
    assert decode_summary(None) == {}


def test_cli_renders_the_summary_of_a_device_load() -> None:
    last_load = {"device": {"cpu_percent": 20.0}, "pipelines": WIRE}
    assert render.load(last_load) == "cpu 20% detect 5.0/s p99 12ms"
    assert render.load({"pipelines": {"x": {}}}) == "cpu 0% x 0.0/s p99 -"
