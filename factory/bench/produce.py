"""Capacity benchmark of production: `medsynth bench produce`.

Measures, in one run with one bundle: the generator alone (1 process, and one process per core),
with glibc's default malloc and with the factory's actor settings; encoding alone; writing alone
(local folder and S3 endpoint); a naive single-process generate-encode-write loop; Ray Data
(`map_batches` on an actor pool, then `write_webdataset`); and the factory's actor pool with 1 and
2 actors into a local folder and into S3. Writes JSON (with the machine's description) and prints
a table. With no --bundle, an untrained EMIXER bundle of the requested size is made first: it has
the shape and cost of a trained one.

The generator-alone, pool and Ray Data measurements run in `--rounds` interleaved rounds and every
ratio is the median of its per-round values: on a shared host the speed of a core drifts over minutes
by more than the effects measured (docs/bench/produce.md), so a ratio of two measurements taken
minutes apart says little.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from factory.raytools import ray_worker_env

STAGE_SCRIPT = "factory.bench.produce"


def machine() -> dict[str, Any]:
    import ray
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "cuda": torch.cuda.is_available(),
            "processor": platform.processor() or platform.machine()}


def _producer(bundle: str, count: int):
    from factory.produce.producers import BundlePairProducer

    return BundlePairProducer(seed=0, bundle_url=bundle, labels="balanced", count=count)


def generate_only(bundle: str, count: int, batch: int) -> dict[str, float]:
    """In this process, one thread: samples/s of the generator (images and reports, no encoding)."""
    import torch

    torch.set_num_threads(1)
    producer = _producer(bundle, count)
    producer.make_batch(range(0, batch))  # warm-up: first-call allocations and kernel selection
    started = time.perf_counter()
    for start in range(0, count, batch):
        producer.make_batch(range(start, min(start + batch, count)))
    seconds = time.perf_counter() - started
    return {"samples": count, "seconds": seconds, "samples_per_s": count / seconds}


def _stage_in_subprocess(stage: str, bundle: str, count: int, batch: int, env: dict[str, str]) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.update(env, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", STAGE_SCRIPT, "_stage", stage, bundle, str(count), str(batch)],
                            stdout=subprocess.PIPE, text=True, env=environment)


def generator_alone(bundle: str, count: int, batch: int, processes: int, tuned_malloc: bool) -> dict[str, float]:
    """Generator throughput of `processes` concurrent single-threaded processes (fresh, so glibc reads
    the malloc settings at start)."""
    env = ray_worker_env() if tuned_malloc else {}
    started = time.perf_counter()
    workers = [_stage_in_subprocess("generate", bundle, count // processes, batch, env) for _ in range(processes)]
    results = [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
    wall = time.perf_counter() - started
    total = sum(r["samples"] for r in results)
    rate = sum(r["samples_per_s"] for r in results)  # excludes each process's start-up and model load
    return {"samples": total, "samples_per_s": rate, "wall_seconds_with_startup": wall}


def encode_and_write(bundle: str, count: int, batch: int, s3_root: str | None, scratch: str) -> dict[str, Any]:
    from factory.produce.samples import encode_sample
    from factory.produce.shards import RunSpec, write_encoded_shard

    producer = _producer(bundle, count)
    samples = producer.make_batch(range(0, count))
    started = time.perf_counter()
    encoded = [encode_sample(s, "bench", 0) for s in samples]
    encode_seconds = time.perf_counter() - started
    megabytes = sum(len(v) for e in encoded for k, v in e.members.items() if k != "__key__") / 2**20
    spec = RunSpec(run_id="bench", requested=count, shard_size=count, seed=0, sample_kind="pair")
    result: dict[str, Any] = {"encode": {"samples_per_s": count / encode_seconds, "mb_per_s": megabytes / encode_seconds}}
    targets = {"local": os.path.join(scratch, "write-only")}
    if s3_root:
        targets["s3"] = f"{s3_root}/write-only"
    for name, out in targets.items():
        started = time.perf_counter()
        write_encoded_shard(out, spec, 0, encoded)
        seconds = time.perf_counter() - started
        result[f"write_{name}"] = {"samples_per_s": count / seconds, "mb_per_s": megabytes / seconds}
    return result


def naive_loop(bundle: str, count: int, batch: int, out: str) -> dict[str, float]:
    """One process, one thread, no overlap: generate a batch, encode it, append it to a tar."""
    import torch
    import webdataset as wds

    from factory.produce.samples import encode_sample

    torch.set_num_threads(1)
    producer = _producer(bundle, count)
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    with open(os.path.join(out, "naive.tar"), "wb") as f:
        tar = wds.TarWriter(f, encoder=False, mtime=0)
        for start in range(0, count, batch):
            for sample in producer.make_batch(range(start, min(start + batch, count))):
                tar.write(encode_sample(sample, "bench", 0).members)
        tar.close()
    seconds = time.perf_counter() - started
    return {"samples_per_s": count / seconds, "mb_per_s": os.path.getsize(os.path.join(out, "naive.tar")) / 2**20 / seconds}


def ray_data(bundle: str, count: int, batch: int, out: str, actors: int) -> dict[str, float]:
    """Ray Data as a peer: range -> map_batches(actor pool) -> write_webdataset."""
    import numpy as np
    import ray

    from factory.produce.samples import encode_sample

    class Generate:
        def __init__(self):
            self.producer = _producer(bundle, count)

        def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, list]:
            ids = rows["id"]
            columns: dict[str, list] = {"__key__": [], "png": [], "txt": [], "cls": [], "json": []}
            for sample in self.producer.make_batch(range(int(ids[0]), int(ids[-1]) + 1)):
                members = encode_sample(sample, "bench", 0).members
                for key in columns:
                    columns[key].append(members[key])
            return columns

    started = time.perf_counter()
    dataset = ray.data.range(count, override_num_blocks=max(1, count // batch)).map_batches(
        Generate, batch_size=batch, compute=ray.data.ActorPoolStrategy(size=actors),
        # Ray Data's read and write tasks each want a whole CPU: actors holding more than half a core
        # each leave them unschedulable on a 2-core node, and the pipeline hangs (seen here with 0.9).
        num_cpus=0.5, runtime_env={"env_vars": ray_worker_env()})
    dataset.write_webdataset(out, encoder=None)
    seconds = time.perf_counter() - started
    return {"samples_per_s": count / seconds, "seconds_with_startup": seconds}


def pool(bundle: str, count: int, batch: int, out: str, actors: int, shard_size: int) -> dict[str, float]:
    """The factory's pool end to end (actor start and bundle load included), and in steady state:
    the samples of shards committed after every actor's first shard, over the time they took. The
    steady-state rate is what a long run sustains and what compares with the generator alone, whose
    rate also excludes start-up."""
    from factory.produce.pool import produce
    from factory.produce.producer_specs import BundlePairs
    from factory.produce.shards import RunSpec

    producer = BundlePairs(bundle=bundle, count=count)
    spec = RunSpec(run_id=f"bench-{actors}", requested=count, shard_size=shard_size, seed=0, sample_kind="pair",
                   config={"producer": producer.echo()})
    commits: list[tuple[float, int]] = []
    started = time.perf_counter()
    manifest = produce(producer, out, spec, actors=actors, batch_size=batch, progress=False,
                       on_commit=lambda index, record: commits.append((time.perf_counter(), len(spec.slots(index)))))
    seconds = time.perf_counter() - started
    warm_from = commits[actors - 1][0]
    steady = commits[actors:]
    steady_rate = sum(n for _, n in steady) / (commits[-1][0] - warm_from) if steady else float("nan")
    return {"samples_per_s": count / seconds, "mb_per_s": manifest["bytes"] / 2**20 / seconds, "seconds": seconds,
            "steady_samples_per_s": steady_rate, "start_up_seconds": commits[0][0] - started,
            "shards": len(commits)}


def peak_rss_mb(pid: int | str = "self") -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def full_run(bundle: str, count: int, batch: int, out: str, actors: int, shard_size: int) -> dict[str, Any]:
    """One production run of `count` samples with a progress bar: wall time, the driver's resident
    memory at every tenth of the run (flat when the driver does not grow with N), and the peak
    resident memory of the driver and of each actor (read from /proc before the actors go)."""
    import psutil

    from factory.produce.pool import produce
    from factory.produce.producer_specs import BundlePairs
    from factory.produce.shards import RunSpec

    producer = BundlePairs(bundle=bundle, count=count)
    spec = RunSpec(run_id="bench-full", requested=count, shard_size=shard_size, seed=0, sample_kind="pair",
                   config={"producer": producer.echo()})
    driver_rss: list[dict[str, float]] = []
    actor_peaks: dict[int, float] = {}
    done = 0

    def on_commit(index: int, record: dict) -> None:
        nonlocal done
        before = done
        done += len(spec.slots(index))
        if done * 10 // count > before * 10 // count or not driver_rss:
            driver_rss.append({"samples": done, "rss_mb": rss_mb()})
        for process in psutil.process_iter(["pid", "cmdline"]):
            if any("ShardWorker" in part for part in process.info["cmdline"] or ()):
                try:
                    actor_peaks[process.info["pid"]] = peak_rss_mb(process.info["pid"])
                except (OSError, RuntimeError):
                    pass  # the process ended between the listing and the read

    started = time.perf_counter()
    manifest = produce(producer, out, spec, actors=actors, batch_size=batch, on_commit=on_commit)
    seconds = time.perf_counter() - started
    return {"count": count, "out": out, "actors": actors, "shard_size": shard_size, "wall_seconds": seconds,
            "samples_per_s": count / seconds, "mb_per_s": manifest["bytes"] / 2**20 / seconds,
            "bytes": manifest["bytes"], "shards": len(manifest["shards"]),
            "driver_peak_rss_mb": peak_rss_mb(), "driver_rss_over_run": driver_rss,
            "actor_peak_rss_mb": sorted(actor_peaks.values())}


def _start_s3() -> tuple[subprocess.Popen | None, str | None]:
    """moto's S3 server in a process of its own on loopback, as a real local endpoint would be: its
    objects (it keeps them in memory) and its CPU do not count against the driver's."""
    try:
        import boto3
        import moto.server  # noqa: F401  (the test extra)
    except ImportError:
        return None, None
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    deadline = time.monotonic() + 60
    while True:
        try:
            boto3.client("s3").create_bucket(Bucket="bench")
            return server, "s3://bench"
        except Exception:  # not listening yet
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.2)


def _write(path: str, results: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


def median_stage(measurements: list[dict[str, float]]) -> dict[str, Any]:
    """Each number's median over rounds, and how many rounds."""
    return {key: float(np.median([m[key] for m in measurements])) for key in measurements[0]
            if isinstance(measurements[0][key], (int, float))} | {"rounds": len(measurements)}


def round_ratios(one: dict[str, dict[str, float]], stages: dict[str, dict[str, float]]) -> dict[str, float]:
    """One round's ratios (generator alone and pool measured next to each other); the one-off stages
    (default malloc, naive loop) come from `stages`."""
    g1 = one["generator alone, 1 process, actor malloc"]["samples_per_s"]
    g2 = one["generator alone, 2 processes, actor malloc"]["samples_per_s"]
    p1, p2 = one["factory pool, 1 actor, local"], one["factory pool, 2 actors, local"]
    return {
        "malloc: actor settings / default (generator)": g1 / stages["generator alone, 1 process, default malloc"]["samples_per_s"],
        "pool 1 actor / generator alone (1 process), steady": p1["steady_samples_per_s"] / g1,
        "pool 2 actors / generator alone (2 processes), steady": p2["steady_samples_per_s"] / g2,
        "pool 2 actors / pool 1 actor, steady": p2["steady_samples_per_s"] / p1["steady_samples_per_s"],
        "pool 2 actors / pool 1 actor, end to end": p2["samples_per_s"] / p1["samples_per_s"],
        "pool 2 actors / ray data, end to end": p2["samples_per_s"] / one["ray data map_batches + write_webdataset"]["samples_per_s"],
        "pool 2 actors / naive loop, end to end": p2["samples_per_s"] / stages["naive loop (1 process)"]["samples_per_s"],
    }


def table(results: dict[str, Any]) -> str:
    nan = float("nan")
    lines = [f"{'stage':<44} {'samples/s':>10} {'steady/s':>9} {'MB/s':>8}"]
    lines += [f"{name:<44} {r['samples_per_s']:>10.1f} {r.get('steady_samples_per_s', nan):>9.1f} "
              f"{r.get('mb_per_s', nan):>8.2f}" for name, r in results["stages"].items()]
    lines.append("")
    lines += [f"{name:<56} {value:>6.2f}" for name, value in results["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_stage":
        _, stage, bundle, count, batch = argv
        print(json.dumps(generate_only(bundle, int(count), int(batch))))
        return 0
    parser = argparse.ArgumentParser(prog="medsynth bench produce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle URL (default: an untrained EMIXER bundle at --size)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16,
                        help="channel width of the untrained bundle (16: the width the CPU training benchmark uses)")
    parser.add_argument("--count", type=int, default=1024, help="samples per measurement")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default=None, help="JSON results (default: docs/bench/produce.json, or "
                        "docs/bench/produce-run.json with --full-run)")
    parser.add_argument("--full-run", type=int, metavar="N", default=None,
                        help="instead of the stages: one production run of N samples with 2 actors into the local "
                             "S3 endpoint (or --full-run-out), reporting wall time and peak memory")
    parser.add_argument("--full-run-out", default=None, help="output URL of --full-run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of generator-alone and pool measurements (ratios: medians over rounds)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = "docs/bench/produce-run.json" if args.full_run else "docs/bench/produce.json"

    import ray

    scratch = tempfile.mkdtemp(prefix="medsynth-bench-")
    bundle = args.bundle
    if bundle is None:
        # In a child process, so that building the networks leaves no trace in this driver's memory.
        bundle = os.path.join(scratch, "bundle")
        subprocess.run([sys.executable, "-m", "factory", "bundle", "init", "emixer", "--out", bundle,
                        "--size", str(args.size), "--width", str(args.width), "--seed", "0"],
                       check=True, stdout=subprocess.DEVNULL)
    server, s3_root = _start_s3()
    if args.full_run:
        out = args.full_run_out or (f"{s3_root}/full-run" if s3_root else os.path.join(scratch, "full-run"))
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
        result = full_run(bundle, args.full_run, args.batch, out, 2, shard_size=1000)
        ray.shutdown()
        if server:
            server.terminate()
        results = {"benchmark": "produce-run", "machine": machine(), "settings": vars(args) | {"bundle": bundle},
                   "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run": result}
        _write(args.out, results)
        print(json.dumps({k: v for k, v in result.items() if k != "driver_rss_over_run"}, indent=1))
        print(f"\nwritten to {args.out}")
        return 0
    stages: dict[str, Any] = {}
    print(f"bench produce: {args.count} samples per stage, bundle {bundle}", file=sys.stderr)
    stages["generator alone, 1 process, default malloc"] = generator_alone(bundle, args.count, args.batch, 1, False)
    stages.update({f"{k.replace('_', ' ')} alone": v
                   for k, v in encode_and_write(bundle, args.count, args.batch, s3_root, scratch).items()})
    stages["naive loop (1 process)"] = naive_loop(bundle, args.count, args.batch, os.path.join(scratch, "naive"))
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    shard = max(args.count // 8, 1)
    # A shared host's speed drifts over minutes (docs/bench/produce.md): each ratio compares
    # measurements taken next to each other, round after round, and the medians are reported.
    rounds = []
    for r in range(args.rounds):
        print(f"round {r + 1} of {args.rounds}", file=sys.stderr)
        one = {"generator alone, 1 process, actor malloc": generator_alone(bundle, args.count, args.batch, 1, True),
               "factory pool, 1 actor, local": pool(bundle, args.count, args.batch,
                                                    os.path.join(scratch, f"p1-{r}"), 1, shard),
               "generator alone, 2 processes, actor malloc": generator_alone(bundle, args.count, args.batch, 2, True),
               "factory pool, 2 actors, local": pool(bundle, args.count, args.batch,
                                                     os.path.join(scratch, f"p2-{r}"), 2, shard)}
        if s3_root:
            one["factory pool, 2 actors, S3 endpoint"] = pool(bundle, args.count, args.batch, f"{s3_root}/p2-{r}", 2, shard)
        one["ray data map_batches + write_webdataset"] = ray_data(bundle, args.count, args.batch,
                                                                  os.path.join(scratch, f"raydata-{r}"), 2)
        rounds.append(one)
    for name in rounds[0]:
        stages[name] = median_stage([one[name] for one in rounds])
    ray.shutdown()
    if server:
        server.terminate()
    per_round = [round_ratios(one, stages) for one in rounds]
    ratios = {name: float(np.median([ratio[name] for ratio in per_round])) for name in per_round[0]}
    results = {"benchmark": "produce", "machine": machine(), "settings": vars(args) | {"bundle": bundle},
               "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stages": stages, "ratios": ratios,
               "ratios_per_round": per_round, "rounds": rounds}
    _write(args.out, results)
    print(table(results))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
