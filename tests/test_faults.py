"""Faults, in process and cheap (the full matrix is `medsynth bench faults`, docs/bench/faults.md): the
bench's endpoint-unreachable row through its own code path; one driver per run location (driver.lock);
a disk that fills up mid-shard, reached through fsspec's registry as the bench's is; a bundle replaced
since its run was planned."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from factory import storage
from factory.bench import faults
from factory.errors import BadInputError, StorageError
from factory.produce import lock
from factory.produce.pool import ShardWorker
from factory.produce.producer_specs import PhantomPairs
from factory.produce.shards import RunSpec, shard_name
from factory.produce.writer import committed_shards


def test_the_bench_row_of_an_unreachable_endpoint(s3_endpoint):
    """`medsynth produce` into an endpoint nothing listens on: exit 2, one line naming it, within seconds,
    before Ray starts (this process holds no Ray afterwards)."""
    import ray

    started = ray.is_initialized()
    row = faults.fault_s3_unreachable(None)
    assert row["ok"], row
    assert row["happened"].startswith("refused before Ray started, exit 2 after ")
    assert "cannot reach the object store (Could not connect to the endpoint URL" in row["happened"]
    assert row["seconds"] < faults.UNREACHABLE_BOUND_S
    assert ray.is_initialized() == started


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("s3_root")


def test_a_second_driver_on_a_run_location_is_refused_naming_the_lock(location):
    with lock.driver_lock(location, "run-a"):
        holder = json.loads(storage.read_bytes(lock.lock_url(location)))
        assert holder["pid"] == os.getpid() and holder["run_id"] == "run-a"
        with pytest.raises(BadInputError, match=rf"^{lock.lock_url(location)}: another driver is writing run run-a "
                                                rf"here \(host {socket.gethostname()}, pid {os.getpid()}, seen \d+ s "
                                                rf"ago\); wait for it to finish, or if it is gone run again after"):
            with lock.driver_lock(location, "run-b"):
                pass
    assert not storage.exists(lock.lock_url(location))  # released
    with lock.driver_lock(location, "run-b"):  # and free again
        pass


def test_a_lock_left_by_a_killed_driver_or_a_vanished_host_is_taken_over(location, monkeypatch):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    url = lock.lock_url(location)
    now = time.time()
    left = {"run_id": "r", "host": socket.gethostname(), "pid": gone.pid, "token": "t", "started_at": now,
            "renewed_at": now}
    storage.atomic_put(url, json.dumps(left).encode())
    with lock.driver_lock(location, "r"):  # its process is gone: taken over at once
        assert json.loads(storage.read_bytes(url))["pid"] == os.getpid()
    elsewhere = left | {"host": "another-host", "pid": 1}
    storage.atomic_put(url, json.dumps(elsewhere).encode())
    with pytest.raises(BadInputError, match="another driver is writing run r here \\(host another-host"):
        with lock.driver_lock(location, "r"):
            pass
    storage.atomic_put(url, json.dumps(elsewhere | {"renewed_at": now - lock.STALE_S - 1}).encode())
    with lock.driver_lock(location, "r"):  # not renewed for longer than STALE_S: taken over
        pass


def test_a_disk_that_fills_mid_shard_stops_the_shard_naming_it_and_keeps_the_committed(tmp_path):
    """The actors' write path without Ray, on the bench's full disk (fullfile://, through fsspec's
    registry): shard 0 fits, shard 1 meets ENOSPC and leaves nothing behind; with space freed it commits."""
    faults.register_full_disk()
    folder = tmp_path / "disk"
    folder.mkdir()
    out = f"{faults.FULL_DISK}://{folder}/run"
    producer = PhantomPairs(size=32)
    spec = RunSpec(run_id="full-disk", requested=20, shard_size=10, seed=1, sample_kind="pair",
                   config={"producer": producer.echo()}, command="pytest")
    worker = ShardWorker(producer, out, spec, batch_size=10)
    first = worker.write(0)
    (tmp_path / "disk.limit").write_text(str(first["bytes"] + first["bytes"] // 2))
    with pytest.raises(StorageError) as caught:
        worker.write(1)
    assert str(caught.value) == (f"{storage.join(out, shard_name(1))}: No space left on device; committed shards are "
                                 "kept, run the same command again to resume")
    assert sorted(p.name for p in (folder / "run").iterdir()) == ["shard-000000.commit.json", "shard-000000.tar"]
    (tmp_path / "disk.limit").unlink()
    worker.write(1)
    assert list(committed_shards(out, spec)) == [0, 1]


def test_a_bundle_replaced_since_its_run_was_planned_is_refused_naming_it(tmp_path):
    from factory.models.bundle import read_metadata
    from factory.models.cli import init_bundle
    from factory.produce.producer_specs import BundlePairs

    url = str(tmp_path / "bundle")
    init_bundle(url, "emixer", size=32, width=4, seed=1)
    planned = read_metadata(url)["sha256"]
    BundlePairs(bundle=url, bundle_sha256=planned, count=4).build(0)  # the bundle it was planned with
    with pytest.raises(BadInputError, match=rf"^{url}/bundle.json: changed since this run was planned"):
        BundlePairs(bundle=url, bundle_sha256="0" * 64, count=4).build(0)


def test_a_driver_refused_after_taking_the_lock_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        with lock.driver_lock(str(out), "r"):
            assert (out / lock.LOCK_NAME).exists()
            raise RuntimeError("refused")
    assert not (tmp_path / "new").exists()
