"""Networks for the benchmarks, built from plmu layers."""
