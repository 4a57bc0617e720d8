"""Runtimes: load a model package and run batches. One module per backend; heavy imports stay inside."""
