"""Benchmarks for llm-rpc (run with ``bench/run``); not part of the package."""
