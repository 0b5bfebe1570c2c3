"""`medsynth bench NAME [options]`: capacity and learnability benchmarks, each writing JSON results
with the machine's description. `medsynth bench NAME --help` lists a benchmark's options."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "cxr-phantom": ("factory.bench.cxr_phantom", "chest X-ray phantom: throughput, and learnability (per-finding AUC)"),
    "produce": ("factory.bench.produce", "production capacity: stages, actor scaling, S3, naive loop, Ray Data"),
    "brain-age": ("factory.bench.brain_age", "brain CT phantom: age regression from one slice (Pearson r)"),
    "train": ("factory.bench.train", "train emixer|xraygan|medrat|justify: learning curves within a CPU budget "
                                     "(emixer --compare: DDP vs ZeRO-0 vs ZeRO-2; xraygan, justify: the "
                                     "papers' Tables 3 and 4)"),
    "load": ("factory.bench.load", "production driver at 1k-100k shards: memory, manifest size, resume scan time"),
    "faults": ("factory.bench.faults", "fault matrix: killed driver/actor/node, S3 outage, full disk, two drivers, "
                                       "killed training worker, replaced bundle: samples lost, duplicated, recovery"),
    "duiit": ("factory.bench.duiit", "DUIIT on brain phantoms: CT age MSE with MRI/PET translated into CT (paper Tables 2-4)"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "\n".join(f"  {name:<12} {text}" for name, (_, text) in BENCHMARKS.items())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHMARKS[args.name][0])
    return int(module.main(args.args) or 0)
