"""`python -m cloud_hub` runs the CLI."""

from cloud_hub.cli import main

raise SystemExit(main())
