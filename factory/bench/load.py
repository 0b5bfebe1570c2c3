"""Load benchmark of production's driver: `medsynth bench load`.

A run of a million pairs is out of reach here, so this measures what such a run asks of its driver as
the number of shards grows (1k, 10k, 100k): its memory, the manifest's size, and the time to resume,
that is to scan and verify every commit record already stored. Shards hold one tiny sample each
(`TinyPairs`: a 1x1 image whose every finding is positive, so each commit record carries the largest
label histogram a pair run writes), so the generator costs nothing and what is left is the driver.

Each setting runs in a fresh process, so that its peak resident memory is its own:

- `pool` (up to --pool-max shards): the real `factory.produce.pool.produce` with 2 Ray actors from an
  empty output: planning, dispatch, commit records coming back, the manifest. The driver's resident
  memory is sampled at every tenth of the run.
- `commit` (beyond --pool-max, where Ray's per-task cost would dominate the hours): the shards are
  written and committed by `write_encoded_shard`, the function the actors call, from a thread pool.
- `resume` (every setting, after removing the manifest): what `produce` does on a rerun before any
  actor starts, in its order, called directly: `existing_manifest`, `committed_shards` (list the
  output, read, check and deep-verify every commit record and its shard), `build_manifest`, the
  stale-partial sweep, `write_manifest`; then `existing_manifest` once more, what a rerun of the
  finished run does.

Stores: a local folder and moto's S3 server on loopback (its own process, so its memory and CPU are not
the driver's). Writes JSON with the machine's description (docs/bench/load.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np

STAGE_MODULE = "factory.bench.load"
POOL_ACTORS = 2
COMMIT_THREADS = 8


class TinyPairProducer:
    """Pairs of a 1x1 image and a one-word report, every finding positive: the cheapest samples that
    still fill a pair's members and the largest label histogram a commit record holds."""

    sample_kind = "pair"

    def make_batch(self, indices: range) -> list:
        from factory.data.labels import CXR_LABELS
        from factory.produce.samples import Sample

        return [Sample(index=i, images={"png": np.full((1, 1), i % 256, np.uint8)}, report="tiny", label=0,
                       metadata={"kind": "pair", "source": {"kind": "phantom", "recipe": "tiny"},
                                 "labels": {name: 1.0 for name in CXR_LABELS}, "primary_label": CXR_LABELS[0]})
                for i in indices]


class TinyPairs:
    """The producer spec the actors get (it has what the pool uses of one: `sample_kind`, `build`)."""

    sample_kind: ClassVar[str] = "pair"

    def build(self, seed: int) -> TinyPairProducer:
        return TinyPairProducer()

    def echo(self) -> dict[str, Any]:
        return {"type": "tiny-pairs"}


def run_spec(shards: int):
    from factory.produce.shards import RunSpec

    return RunSpec(run_id=f"load-{shards}", requested=shards, shard_size=1, seed=0, sample_kind="pair",
                   config={"producer": TinyPairs().echo()}, command="medsynth bench load")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _clock() -> tuple[float, float]:
    return time.perf_counter(), _cpu()


def _since(start: tuple[float, float]) -> dict[str, float]:
    return {"wall_s": time.perf_counter() - start[0], "cpu_s": _cpu() - start[1]}


def stage_pool(out: str, shards: int) -> dict[str, Any]:
    """The real pool, 2 actors, from an empty output."""
    import ray

    from factory.bench.produce import peak_rss_mb, rss_mb
    from factory.produce.pool import produce

    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    spec = run_spec(shards)
    baseline = rss_mb()
    samples: list[dict[str, float]] = []
    done = 0

    def on_commit(index: int, record: dict) -> None:
        nonlocal done
        done += 1
        if done * 10 // shards > (done - 1) * 10 // shards:
            samples.append({"shards": done, "rss_mb": rss_mb()})

    start = _clock()
    manifest = produce(TinyPairs(), out, spec, actors=POOL_ACTORS, progress=False, on_commit=on_commit)
    took = _since(start)
    ray.shutdown()
    assert len(manifest["shards"]) == shards
    return {"pool": took | {"actors": POOL_ACTORS, "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(),
                            "rss_over_run": samples}}


def stage_commit(out: str, shards: int) -> dict[str, Any]:
    """Every shard committed as an actor commits it, from threads of this process."""
    from factory.produce.samples import encode_sample
    from factory.produce.shards import write_encoded_shard

    spec = run_spec(shards)
    producer = TinyPairProducer()

    def commit(index: int) -> None:
        sample = producer.make_batch(range(index, index + 1))[0]
        write_encoded_shard(out, spec, index, [encode_sample(sample, spec.run_id, spec.seed)])

    start = _clock()
    with ThreadPoolExecutor(COMMIT_THREADS) as threads:
        for _ in threads.map(commit, range(shards)):
            pass
    return {"commit": _since(start) | {"threads": COMMIT_THREADS}}


def stage_resume(out: str, shards: int) -> dict[str, Any]:
    """A rerun's driver work before any actor starts, then the manifest, then a rerun of the finished run."""
    from factory import storage
    from factory.bench.produce import peak_rss_mb, rss_mb
    from factory.produce.manifest import build_manifest, existing_manifest, write_manifest
    from factory.produce.pool import _remove_stale_partials, shards_to_write
    from factory.produce.writer import committed_shards
    from factory.run_manifest import manifest_url

    spec = run_spec(shards)
    out = storage.absolute(out)
    baseline = rss_mb()
    result: dict[str, Any] = {"baseline_rss_mb": baseline}
    start = _clock()
    assert existing_manifest(out, spec) is None
    records = committed_shards(out, spec)
    result["scan"] = _since(start) | {"records": len(records), "rss_mb": rss_mb()}
    assert len(records) == shards and next(shards_to_write(spec, records), None) is None
    start = _clock()
    manifest = build_manifest(spec, records.values())
    _remove_stale_partials(out)
    write_manifest(out, manifest)
    result["manifest"] = _since(start) | {"bytes": storage.size(manifest_url(out)), "rss_mb": rss_mb()}
    del manifest, records
    start = _clock()
    again = existing_manifest(out, spec)
    result["reread"] = _since(start)
    assert again is not None and len(again["shards"]) == shards
    result["peak_rss_mb"] = peak_rss_mb()
    return result


STAGES = {"pool": stage_pool, "commit": stage_commit, "resume": stage_resume}


def _stage(name: str, out: str, shards: int) -> dict[str, Any]:
    """One stage in a fresh process: its peak memory is its own, not the previous settings'."""
    done = subprocess.run([sys.executable, "-m", STAGE_MODULE, "_stage", name, out, str(shards)],
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _clear(out: str) -> None:
    from factory import storage

    fs, path = storage.filesystem(out)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def measure(store: str, root: str, shards: int, pool_max: int) -> dict[str, Any]:
    from factory import storage
    from factory.run_manifest import manifest_url

    out = storage.join(root, f"load-{shards}")
    _clear(out)
    print(f"bench load: {store}, {shards} shards", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"store": store, "shards": shards, "load_before": os.getloadavg()}
    result |= _stage("pool" if shards <= pool_max else "commit", out, shards)
    storage.remove(manifest_url(out))  # as if the run had stopped after its last commit
    result |= _stage("resume", out, shards)
    result["manifest"]["bytes_per_shard"] = result["manifest"]["bytes"] / shards
    growth = result["resume"]["peak_rss_mb"] - result["resume"]["baseline_rss_mb"]
    result["resume"]["growth_kb_per_shard"] = growth * 1024 / shards
    result["load_after"] = os.getloadavg()
    _clear(out)
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'store':<6} {'shards':>7} {'how':>6} {'manifest B/shard':>16} {'scan ms/shard':>13} "
             f"{'scan CPU ms/shard':>17} {'driver peak MB':>14} {'growth KB/shard':>15}"]
    for r in results:
        n = r["shards"]
        lines.append(f"{r['store']:<6} {n:>7} {'pool' if 'pool' in r else 'commit':>6} "
                     f"{r['manifest']['bytes_per_shard']:>16.0f} {r['scan']['wall_s'] * 1e3 / n:>13.2f} "
                     f"{r['scan']['cpu_s'] * 1e3 / n:>17.2f} {r['resume']['peak_rss_mb']:>14.0f} "
                     f"{r['resume']['growth_kb_per_shard']:>15.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_stage":
        _, name, out, shards = argv
        shards_n = int(shards)
        result = STAGES[name](out, shards_n)
        if name == "resume":  # the stage's numbers at the top level, its memory under "resume"
            result = {"scan": result.pop("scan"), "manifest": result.pop("manifest"),
                      "reread": result.pop("reread"), "resume": result}
        print(json.dumps(result))
        return 0
    from factory.bench.produce import _start_s3, _write, machine

    parser = argparse.ArgumentParser(prog="medsynth bench load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="1000,10000,100000", help="comma-separated shard counts")
    parser.add_argument("--stores", default="local,s3", help="local, s3 (moto on loopback) or both")
    parser.add_argument("--s3-max", type=int, default=10**5, help="largest shard count run on S3")
    parser.add_argument("--pool-max", type=int, default=1000,
                        help="largest shard count written by the real Ray pool; above it shards are committed "
                             "directly (0: never start Ray)")
    parser.add_argument("--out", default="docs/bench/load.json", help="JSON results")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.shards.split(",")]
    stores = args.stores.split(",")
    scratch = tempfile.mkdtemp(prefix="medsynth-load-")
    server, s3_root = _start_s3() if "s3" in stores else (None, None)
    if "s3" in stores and s3_root is None:
        parser.error("--stores s3 needs moto (the test extra)")
    results = []
    try:
        for shards in counts:
            for store in stores:
                if store == "s3" and shards > args.s3_max:
                    continue
                root = os.path.join(scratch, "out") if store == "local" else s3_root
                results.append(measure(store, root, shards, args.pool_max))
                _write(args.out, {"benchmark": "load", "machine": machine(), "settings": vars(args),
                                  "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "results": results})
    finally:
        if server:
            server.terminate()
        shutil.rmtree(scratch, ignore_errors=True)
    print(table(results))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
