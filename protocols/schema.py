"""JSON Schema files for every wire message, generated from the pydantic models.

`python -m protocols.schema --write DIR` writes `<ModelName>.schema.json` per message (and removes stale
ones); `python -m protocols.schema --check DIR` exits 1 listing files that drifted, are missing or extra.
The committed copies live in `protocols/schemas/`, so non-Python peers can validate what they send.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

SUFFIX = ".schema.json"
SCHEMA_DIR = Path(__file__).with_name("schemas")


def schema_models() -> tuple[type[BaseModel], ...]:
    """Every model that gets a schema file: the V2 messages, the manifest and the MQTT/HTTP messages."""
    from protocols.manifest import Manifest
    from protocols.messages import MESSAGE_MODELS
    from protocols.v2 import V2_MODELS

    return (*V2_MODELS, Manifest, *MESSAGE_MODELS)


def render(model: type[BaseModel]) -> str:
    """The schema file's text for `model`: pretty-printed, sorted keys, trailing newline."""
    return json.dumps(model.model_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    """File name -> text for every schema file that should exist."""
    files: dict[str, str] = {}
    for model in schema_models():
        name = model.__name__ + SUFFIX
        if name in files:
            raise ValueError(f"two schema models are called {model.__name__}")
        files[name] = render(model)
    return files


def check(directory: Path) -> list[str]:
    """Problems with the schema files in `directory` ('drifted: X', 'missing: X', 'extra: X'); [] if none."""
    expected = expected_files()
    present = {p.name for p in directory.glob(f"*{SUFFIX}")} if directory.is_dir() else set()
    problems = [f"missing: {name}" for name in sorted(expected.keys() - present)]
    problems += [f"extra: {name}" for name in sorted(present - expected.keys())]
    problems += [
        f"drifted: {name}"
        for name in sorted(expected.keys() & present)
        if (directory / name).read_text(encoding="utf-8") != expected[name]
    ]
    return problems


def write(directory: Path) -> list[str]:
    """Write every schema file into `directory` (atomically) and delete stale ones; returns names written."""
    expected = expected_files()
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in expected.items():
        _write_atomic(directory / name, text)
    for stale in directory.glob(f"*{SUFFIX}"):
        if stale.name not in expected:
            stale.unlink()
    return sorted(expected)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m protocols.schema", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="DIR", type=Path, help="write the schema files into DIR")
    group.add_argument("--check", metavar="DIR", type=Path, help="exit 1 if DIR's schema files are not current")
    args = parser.parse_args(argv)
    if args.write is not None:
        names = write(args.write)
        sys.stdout.write(f"wrote {len(names)} schema files to {args.write}\n")
        return 0
    problems = check(args.check)
    for problem in problems:
        sys.stderr.write(f"{problem}\n")
    if problems:
        sys.stderr.write(f"run: python -m protocols.schema --write {args.check}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
