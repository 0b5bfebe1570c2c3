"""Capacity and quality benchmarks: each writes JSON results and a Markdown table."""
