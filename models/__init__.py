"""Model artifacts: package format, signing, export, compile, and runtimes that run batches."""
