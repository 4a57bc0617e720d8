"""The committed JSON Schema files match the models, and the generator's CLI works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from protocols.manifest import Manifest
from protocols.messages import MESSAGE_MODELS
from protocols.schema import SCHEMA_DIR, check, expected_files, main, render, write
from protocols.v2 import V2_MODELS


def test_committed_schemas_are_current() -> None:
    problems = check(SCHEMA_DIR)
    assert not problems, f"schemas drifted, run `python -m protocols.schema --write protocols/schemas`: {problems}"


def test_one_file_per_message() -> None:
    names = set(expected_files())
    models: tuple[type[BaseModel], ...] = (*V2_MODELS, Manifest, *MESSAGE_MODELS)
    assert names == {f"{m.__name__}.schema.json" for m in models}
    assert len(names) == len(models)


def test_render_is_sorted_pretty_json_with_trailing_newline() -> None:
    text = render(Manifest)
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert json.loads(text)["additionalProperties"] is False


def test_write_then_check_and_drift_detection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", str(tmp_path)]) == 1
    assert "missing: InferRequest.schema.json" in capsys.readouterr().err
    (tmp_path / "Stale.schema.json").write_text("{}\n")
    assert main(["--write", str(tmp_path)]) == 0
    assert not (tmp_path / "Stale.schema.json").exists()
    assert check(tmp_path) == []
    (tmp_path / "ErrorResponse.schema.json").write_text("{}\n")
    (tmp_path / "Extra.schema.json").write_text("{}\n")
    assert check(tmp_path) == ["extra: Extra.schema.json", "drifted: ErrorResponse.schema.json"]
    assert main(["--check", str(tmp_path)]) == 1
    write(tmp_path)
    assert main(["--check", str(tmp_path)]) == 0
