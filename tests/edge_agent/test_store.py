"""The model store: verified installs, atomic active pointer, rollback, crash leftovers, restart."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig
from edge_agent.errors import NotFound, StoreError
from edge_agent.store import ModelStore, Pointer, collect, version_key
from models.signing import load_trusted_keys
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE, zoo_package_path
from protocols.pipeline import PipelineSpec

KEYS = load_trusted_keys([ZOO_PUBLIC_KEY_FILE])


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    s = ModelStore(tmp_path / "models")
    s.open()
    return s


def test_install_activate_rollback_and_restart(store: ModelStore) -> None:
    store.install(zoo_package_path("tiny-cnn", 1), KEYS)
    store.install(zoo_package_path("tiny-cnn", 2), KEYS)
    assert store.versions("tiny-cnn") == ["1", "2"]
    assert store.active("tiny-cnn") is None
    assert store.activate("tiny-cnn", "1") == Pointer("1", None)
    assert store.activate("tiny-cnn", "2") == Pointer("2", "1")
    # A fresh store object (a restarted agent) reads the same pointer.
    again = ModelStore(store.root)
    again.open()
    assert again.pointer("tiny-cnn") == Pointer("2", "1")
    assert again.rollback("tiny-cnn") == Pointer("1", "2")
    assert json.loads((store.root / "tiny-cnn" / "active.json").read_text()) == {"active": "1", "previous": "2"}
    assert store.package("tiny-cnn", "1").manifest.version == "1"
    assert store.models() == ["tiny-cnn"]


def test_install_is_idempotent_and_versions_are_immutable(store: ModelStore, tmp_path: Path) -> None:
    store.install(zoo_package_path("tiny-cnn", 1), KEYS)
    store.install(zoo_package_path("tiny-cnn", 1), KEYS)
    fake = tmp_path / "fake"
    shutil.copytree(zoo_package_path("tiny-cnn", 2), fake)
    manifest = json.loads((fake / "manifest.json").read_text())
    manifest["version"] = "1"
    (fake / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="different content"):
        store.install(fake, KEYS, verify=False)


def test_tampered_or_unsigned_package_never_becomes_visible(store: ModelStore, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(zoo_package_path("tiny-mlp", 1), bad)
    with (bad / "model.onnx").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff\xff")
    with pytest.raises(StoreError, match="failed verification"):
        store.install(bad, KEYS)
    unsigned = tmp_path / "unsigned"
    shutil.copytree(zoo_package_path("tiny-mlp", 1), unsigned)
    (unsigned / "manifest.sig.json").unlink()
    with pytest.raises(StoreError, match="failed verification"):
        store.install(unsigned, KEYS)
    assert store.versions("tiny-mlp") == []
    assert list((store.root / "tiny-mlp").iterdir()) == []  # no temp copy left behind


def test_crash_leftovers_are_ignored_then_cleaned_on_open(store: ModelStore) -> None:
    store.install(zoo_package_path("tiny-mlp", 1), KEYS)
    store.activate("tiny-mlp", "1")
    model_dir = store.root / "tiny-mlp"
    half = model_dir / ".incoming-2-abc"
    shutil.copytree(zoo_package_path("tiny-mlp", 1), half)
    (model_dir / ".active.json.x1.tmp").write_text('{"active": "2"')
    assert store.versions("tiny-mlp") == ["1"]  # a half-installed version is never visible
    assert store.active("tiny-mlp") == "1"
    restarted = ModelStore(store.root)
    restarted.open()
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "active.json"]


def test_pointer_switch_is_atomic(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.install(zoo_package_path("tiny-cnn", 1), KEYS)
    store.install(zoo_package_path("tiny-cnn", 2), KEYS)
    store.activate("tiny-cnn", "1")

    def crash(src: str, dst: str) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        store.activate("tiny-cnn", "2")
    monkeypatch.undo()
    assert store.pointer("tiny-cnn") == Pointer("1", None)
    assert sorted(p.name for p in (store.root / "tiny-cnn").iterdir()) == ["1", "2", "active.json"]


def test_errors_for_unknown_versions_and_remove(store: ModelStore) -> None:
    with pytest.raises(NotFound):
        store.activate("tiny-cnn", "1")
    with pytest.raises(NotFound):
        store.path("../etc", "1")
    store.install(zoo_package_path("tiny-cnn", 1), KEYS)
    store.install(zoo_package_path("tiny-cnn", 2), KEYS)
    store.activate("tiny-cnn", "2")
    with pytest.raises(StoreError, match="no previous"):
        store.rollback("tiny-cnn")
    with pytest.raises(StoreError, match="referenced"):
        store.remove("tiny-cnn", "2")
    store.remove("tiny-cnn", "1")
    assert store.versions("tiny-cnn") == ["2"]


def test_version_order() -> None:
    assert sorted(["10", "2", "1.10", "1.9"], key=version_key) == ["1.9", "1.10", "2", "10"]


def test_collect_in_place_and_from_store(tmp_path: Path) -> None:
    standalone = AgentConfig(standalone=True, model_dirs=[PACKAGES_DIR], trusted_keys=[ZOO_PUBLIC_KEY_FILE])
    packages, active = collect(standalone)
    assert sorted((p.manifest.name, p.manifest.version) for p in packages) == [
        ("mobilenet-v2", "1"),
        ("text-echo", "1"),
        ("tiny-cnn", "1"),
        ("tiny-cnn", "2"),
        ("tiny-mlp", "1"),
    ]
    assert active == {"mobilenet-v2": "1", "text-echo": "1", "tiny-cnn": "2", "tiny-mlp": "1"}
    device = AgentConfig(
        state_dir=tmp_path / "state",
        model_dirs=[PACKAGES_DIR],
        trusted_keys=[ZOO_PUBLIC_KEY_FILE],
        pipelines=[PipelineSpec(name="old-cnn", model="tiny-cnn", version="1")],
    )
    packages, active = collect(device)
    assert active == {"mobilenet-v2": "1", "text-echo": "1", "tiny-cnn": "2", "tiny-mlp": "1"}
    assert sorted((p.manifest.name, p.manifest.version) for p in packages) == [
        ("mobilenet-v2", "1"),
        ("text-echo", "1"),
        ("tiny-cnn", "1"),
        ("tiny-cnn", "2"),
        ("tiny-mlp", "1"),
    ]
    assert all(str(p.path).startswith(str(tmp_path)) for p in packages)
    # An operator's activation survives the next start's import.
    store = ModelStore(tmp_path / "state" / "models")
    store.activate("tiny-cnn", "1")
    _, active = collect(device)
    assert active["tiny-cnn"] == "1"


def test_prune_keeps_active_previous_and_the_pinned_ones(store: ModelStore, tmp_path: Path) -> None:
    for version in ("3", "4"):
        copy = tmp_path / f"v{version}"
        shutil.copytree(zoo_package_path("tiny-cnn", 2), copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["version"] = version
        (copy / "manifest.json").write_text(json.dumps(manifest))
        store.install(copy, KEYS, verify=False)  # unsigned copies: the store's own checks still run
    store.install(zoo_package_path("tiny-cnn", 1), KEYS)
    store.install(zoo_package_path("tiny-cnn", 2), KEYS)
    store.activate("tiny-cnn", "1")
    store.activate("tiny-cnn", "2")
    assert store.prune("tiny-cnn", keep={"3"}) == ["4"]
    assert store.versions("tiny-cnn") == ["1", "2", "3"]
    assert store.prune("tiny-cnn") == ["3"]
    assert store.versions("tiny-cnn") == ["1", "2"] and store.pointer("tiny-cnn") == Pointer("2", "1")
    assert not [p for p in (store.root / "tiny-cnn").iterdir() if p.name.startswith(".")]
