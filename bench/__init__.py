"""Benchmarks that print one comparable ratio per line; `python -m bench` runs them all."""
