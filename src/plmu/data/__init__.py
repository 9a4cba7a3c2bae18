"""Datasets of the benchmarks, one module per benchmark."""
