"""Benchmarks (see bench/README.md): bench/common is the library, bench/<name>/run.py the scripts."""
