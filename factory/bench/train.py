"""`medsynth bench train RECIPE ...`: the learning benchmark of a trainable generator, by recipe."""

from __future__ import annotations

import importlib

BENCHMARKS = {"emixer": "factory.bench.train_emixer", "xraygan": "factory.bench.train_xraygan",
              "medrat": "factory.bench.train_medrat", "justify": "factory.bench.train_justify"}


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: medsynth bench train {{{','.join(BENCHMARKS)}}} [options]  (--help after the name lists them)")
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]])
    # train_emixer reads its recipe as a positional argument; the others take options only.
    return int(module.main(argv if argv[0] == "emixer" else argv[1:]) or 0)
