"""The production actor pool on a real local Ray instance: reproducible across actor counts,
exactly once when an actor is killed or the driver interrupted, shards straight to S3; its Ray
metrics as Ray's Prometheus endpoint serves them."""

import io
import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request

import pytest

from factory import storage
from factory.config import MAX_COUNT, MAX_SHARDS
from factory.errors import BadInputError, FactoryError
from factory.run_manifest import read_manifest
from factory.produce import pool
from factory.produce.pool import produce, shards_to_write
from factory.produce.producer_specs import PhantomPairs
from factory.produce.producers import PhantomPairProducer
from factory.produce.shards import RunSpec, shard_name
from factory.produce.verify import verify_run
from factory.produce.writer import write_run

PRODUCER = PhantomPairs(size=32)


def run_spec(count, shard_size, run_id="pool-test"):
    return RunSpec(run_id=run_id, requested=count, shard_size=shard_size, seed=3, sample_kind="pair",
                   config={"producer": PRODUCER.echo()}, command="pytest")


def all_keys(out, manifest):
    keys = []
    for record in manifest["shards"]:
        data = storage.read_bytes(storage.join(out, record["name"]))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            keys += sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    return keys


def scraped(ray, run_id: str, wanted: dict[tuple[str, str | None], float], timeout_s: float = 40.0) -> dict:
    """The run's medsynth series from the Prometheus endpoint of Ray's metrics agent, once they show
    `wanted` ((name, gate) -> value): the agent exports what it received every few seconds."""
    port = ray._private.worker._global_node.metrics_export_port
    line = re.compile(r'^ray_(medsynth_\w+?)(?:_total)?\{(.*)\} (\S+)$')
    deadline = time.monotonic() + timeout_s
    while True:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        series = {}
        for match in filter(None, map(line.match, body.splitlines())):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
            if labels.get("run_id") == run_id:
                series[(match[1], labels.get("gate"))] = float(match[3])
        if all(series.get(key) == value for key, value in wanted.items()) or time.monotonic() > deadline:
            return series
        time.sleep(0.25)


def test_one_or_two_actors_write_byte_identical_shards(ray_local, tmp_path):
    spec = run_spec(count=45, shard_size=8)
    one = produce(PRODUCER, str(tmp_path / "one"), spec, actors=1, batch_size=5, progress=False)
    two = produce(PRODUCER, str(tmp_path / "two"), spec, actors=2, batch_size=5, progress=False)
    serial = write_run(PhantomPairProducer(3, 32).make_batch(range(45)), str(tmp_path / "serial"), spec,
                       progress=False)
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in serial["shards"]]
    for i in range(len(one["shards"])):
        assert (tmp_path / "one" / shard_name(i)).read_bytes() == (tmp_path / "two" / shard_name(i)).read_bytes()
    assert all_keys(str(tmp_path / "one"), one) == [f"pool-test-{i:010d}" for i in range(45)]


def test_pool_writes_straight_to_s3(ray_local, s3_root):
    manifest = produce(PRODUCER, s3_root, run_spec(count=20, shard_size=10), actors=2, progress=False)
    assert read_manifest(s3_root) == manifest
    verify_run(s3_root, manifest)
    assert all_keys(s3_root, manifest) == [f"pool-test-{i:010d}" for i in range(20)]


def test_killed_actor_shard_is_redone_exactly_once(ray_local, tmp_path):
    out = str(tmp_path / "run")
    spec = run_spec(count=600, shard_size=20, run_id="kill-test")
    killed = threading.Event()

    def kill_first_actor_mid_run():
        while not any(n.endswith(".commit.json") for n in storage.list_names(out)):
            time.sleep(0.05)
        ray_local.kill(ray_local.get_actor("kill-test-actor-0"))
        killed.set()

    killer = threading.Thread(target=kill_first_actor_mid_run, daemon=True)
    killer.start()
    manifest = produce(PRODUCER, out, spec, actors=2, batch_size=10, progress=False,
                       actor_name_prefix="kill-test-actor")
    killer.join(timeout=5)
    assert killed.is_set()
    assert manifest["count"] == 600 and len(manifest["shards"]) == 30
    assert all_keys(out, manifest) == [f"kill-test-{i:010d}" for i in range(600)]
    assert not [n for n in storage.list_names(out) if n.endswith(".partial")]
    verify_run(out, manifest)
    wanted = {("medsynth_produce_samples", None): 600, ("medsynth_produce_shards_committed", None): 30,
              ("medsynth_produce_actor_restarts", None): 1, ("medsynth_produce_shard_seconds_count", None): 30}
    series = scraped(ray_local, "kill-test", wanted)
    assert {key: series.get(key) for key in wanted} == wanted
    assert series[("medsynth_produce_samples_per_second", None)] > 0


def test_more_actors_than_the_cluster_places_finish_on_those_it_does(ray_local, tmp_path, caplog):
    out = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger=pool.__name__):
        manifest = produce(PRODUCER, out, run_spec(count=30, shard_size=5), actors=1000, progress=False)
    assert "1000 actors asked, the cluster can place 2 now: shards go to those, and up to 4 more join" in caplog.text
    assert all_keys(out, manifest) == [f"pool-test-{i:010d}" for i in range(30)]
    verify_run(out, manifest)


def test_an_actor_no_node_can_hold_fails_after_a_bounded_reported_wait(ray_local, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(pool, "ACTOR_START_TIMEOUT_MIN", 0.05)
    needs = (r"each actor needs 3 CPU and 0 GPU \(--cpus-per-actor, --gpus-per-actor\), the cluster's nodes have at "
             r"most 2 CPU and \d+ GPU$")  # GPUs: whatever ray_local found
    with caplog.at_level(logging.WARNING, logger=pool.__name__), \
            pytest.raises(FactoryError, match=r"^run pool-test: no production actor started within 0.05 min; " + needs):
        produce(PRODUCER, str(tmp_path / "run"), run_spec(count=10, shard_size=5), cpus_per_actor=3, progress=False)
    assert "no node of the Ray cluster can hold a production actor now: each actor needs 3 CPU" in caplog.text
    assert "waiting up to 0.05 min for an autoscaler to add one" in caplog.text


def test_the_plan_of_the_largest_run_holds_nothing_per_shard():
    import tracemalloc

    spec = run_spec(count=MAX_COUNT, shard_size=MAX_COUNT // MAX_SHARDS)
    tracemalloc.start()
    try:
        plan = shards_to_write(spec, {3: {}, 7: {}})
        first = list(itertools.islice(plan, 5))
        rest = sum(1 for _ in plan)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first == [0, 1, 2, 4, 5] and rest == MAX_SHARDS - 7
    assert peak < 64 * 1024  # a list or deque of its 10^5 indices alone would take about 4 MB


def test_interrupted_driver_resumes_to_exactly_once(ray_local, tmp_path):
    """The driver runs with a Ray of its own and is interrupted (Ctrl-C to its process group); the
    same command run again (here on the session's Ray, as a restarted driver meets a running cluster)
    resumes and ends with every sample exactly once."""
    from factory.cli import main

    out = tmp_path / "run"
    arguments = ["produce", "--source", "phantom-cxr", "--size", "32", "--count", "800", "--shard-size", "20",
                 "--out", str(out), "--seed", "5", "--actors", "1"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    first = subprocess.Popen([sys.executable, "-m", "factory", *arguments], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.commit.json")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    if first.poll() is not None:
        pytest.fail(f"the run ended before it could be interrupted:\n{first.communicate()[0][-3000:]}")
    os.killpg(first.pid, signal.SIGINT)
    output = first.communicate(timeout=60)[0]
    assert first.returncode != 0, output
    assert not (out / "manifest.json").exists()
    committed_before = len(list(out.glob("*.commit.json")))
    assert 0 < committed_before < 40
    assert main(arguments) == 0
    manifest = read_manifest(str(out))
    assert all_keys(str(out), manifest) == [manifest["run_id"] + f"-{i:010d}" for i in range(800)]
    verify_run(str(out), manifest)


def test_quality_gate_drops_before_writing_and_manifest_counts(ray_local, tmp_path):
    from factory.produce.gates import image_contrast

    contrasts = image_contrast(PhantomPairProducer(3, 32).make_batch(range(30)))
    threshold = float(sorted(contrasts)[10])  # the 10 flattest of 30 fall below
    gate = {"scorer": "factory.produce.gates:image_contrast", "min": threshold, "reason": "flat-image",
            "quality_key": "contrast"}
    out = str(tmp_path / "gated")
    manifest = produce(PRODUCER, out, run_spec(count=30, shard_size=10, run_id="gate-test"), actors=2, gates=[gate],
                       progress=False)
    assert manifest["dropped"] == {"flat-image": 10}
    assert manifest["count"] == 20 and sum(s["count"] for s in manifest["shards"]) == 20
    kept = sorted(i for i, c in enumerate(contrasts) if c >= threshold)
    assert all_keys(out, manifest) == [f"gate-test-{i:010d}" for i in kept]
    verify_run(out, manifest)
    card = open(os.path.join(out, "dataset_card.md")).read()  # written before the manifest, beside it
    assert '---\nrun_id: "gate-test"\nsample_kind: "pair"\ncount: 20\n' in card
    assert "\nsynthetic: true\nintended_use: " in card and "\ngenerated: " not in card
    assert "built-in chest X-ray phantom" in card and "dropped by quality gates: flat-image 10" in card
    assert "quality gates: " in card and "not for diagnosis" in card
    wanted = {("medsynth_produce_samples_dropped", "flat-image"): 10, ("medsynth_produce_samples", None): 20}
    series = scraped(ray_local, "gate-test", wanted)
    assert {key: series.get(key) for key in wanted} == wanted


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from factory.models.cli import init_bundle

    url = str(tmp_path_factory.mktemp("bundle") / "emixer")
    init_bundle(url, "emixer", size=32, width=8, seed=1)
    return url


def test_bundle_production_is_identical_with_one_or_two_actors(ray_local, tiny_bundle, tmp_path):
    from factory.config import ProduceConfig
    from factory.produce.runs import production_spec

    config = ProduceConfig(bundle=tiny_bundle, count=36, shard_size=10, batch_size=4, out=str(tmp_path / "x"))
    producer, spec = production_spec(config)
    one = produce(producer, str(tmp_path / "one"), spec, actors=1, batch_size=4, progress=False)
    two = produce(producer, str(tmp_path / "two"), spec, actors=2, batch_size=4, progress=False)
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]
    assert all_keys(str(tmp_path / "two"), two) == [f"{spec.run_id}-{i:010d}" for i in range(36)]
    assert spec.run_id.startswith("emixer-s0-")


def test_explicit_label_counts_are_honoured(ray_local, tiny_bundle, tmp_path):
    from factory.config import ProduceConfig
    from factory.produce.runs import run_production

    counts = tmp_path / "labels.yaml"
    counts.write_text("No Finding: 5\nCardiomegaly+Pleural Effusion: 7\nEdema: 3\n")
    out = str(tmp_path / "run")
    manifest = run_production(ProduceConfig(bundle=tiny_bundle, count=15, shard_size=6, out=out, actors=2,
                                            labels=str(counts)), progress=False)
    assert manifest["label_histogram"] == {"No Finding": 5, "Cardiomegaly": 7, "Pleural Effusion": 7, "Edema": 3}
    with pytest.raises(BadInputError, match="labels.yaml: label counts add up to 15, not the run's count 16"):
        run_production(ProduceConfig(bundle=tiny_bundle, count=16, shard_size=6, out=str(tmp_path / "bad"),
                                     labels=str(counts)), progress=False)

