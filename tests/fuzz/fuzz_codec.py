#!/usr/bin/env python3
"""atheris harness for the V2 binary tensor codec (longer runs than the hypothesis tests in `make test`).

    .venv/bin/python tests/fuzz/fuzz_codec.py -atheris_runs=100000 [-rss_limit_mb=1024] [corpus_dir]

Fails (with the crashing input saved as crash-*) when decode_request/decode_response raise anything but
CodecError; libFuzzer's -rss_limit_mb (default 2048) catches a decode that allocates out of bounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

import atheris  # noqa: E402

with atheris.instrument_imports(include=["protocols"]):
    import protocols.binary  # noqa: F401

from fuzz_targets import codec_request, codec_response  # noqa: E402


def test_one_input(data: bytes) -> None:
    """One fuzz input through both decoders."""
    codec_request(data)
    codec_response(data)


def main() -> None:
    """Run libFuzzer with the command-line options."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
