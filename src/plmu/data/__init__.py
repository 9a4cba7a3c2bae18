"""Data for the benchmarks: one module per benchmark (or family of benchmarks)."""
