"""A real multi-node Ray cluster on this machine (separate `ray start` processes for the head and a
worker node), a production job submitted through the Ray Jobs API into the S3 endpoint, and a failing
job whose error reaches the submitter."""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from factory.run_manifest import read_manifest
from factory.produce.verify import verify_run

REPO = Path(__file__).resolve().parents[1]
FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    state_dir = Path(tempfile.mkdtemp(prefix="msr", dir="/tmp"))  # Ray's socket paths need a short one
    script = [sys.executable, str(REPO / "cluster" / "local_cluster.py")]
    subprocess.run([*script, "up", "--state-dir", str(state_dir), "--head-cpus", "1",
                    "--worker", '1:{"produce": 1}', "--timeout", "120"], check=True, cwd=REPO)
    try:
        yield json.loads((state_dir / "cluster.json").read_text())
    finally:
        # A head's GCS outlives SIGTERM by about 30 s and is killed after the grace period either way:
        # the default 10 s of it only delayed the test.
        subprocess.run([*script, "down", "--state-dir", str(state_dir), "--grace", "2"], check=False, cwd=REPO)


def submit_and_wait(dashboard_url, entrypoint, timeout=300):
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    deadline = time.monotonic() + timeout
    while (status := str(client.get_job_status(job_id)).rsplit(".", 1)[-1]) not in FINAL:
        assert time.monotonic() < deadline, f"job {job_id} still {status}: {client.get_job_logs(job_id)[-3000:]}"
        time.sleep(1)
    return status, client.get_job_logs(job_id)


def test_cluster_has_two_nodes(cluster):
    import urllib.request

    with urllib.request.urlopen(f"{cluster['dashboard_url']}/nodes?view=summary", timeout=10) as response:
        summary = json.load(response)["data"]["summary"]
    assert sum(1 for node in summary if node["raylet"]["state"] == "ALIVE") == 2


def test_production_job_writes_shards_to_s3(cluster, s3_root):
    entrypoint = ("python jobs/produce.py --config jobs/configs/produce.yaml "
                  f"--set out={s3_root} --set count=240 --set shard_size=40 --set size=32 --set actors=2")
    status, logs = submit_and_wait(cluster["dashboard_url"], entrypoint)
    assert status == "SUCCEEDED", logs[-3000:]
    manifest = read_manifest(s3_root)
    assert manifest["count"] == 240 and len(manifest["shards"]) == 6
    assert manifest["command"].startswith("python jobs/produce.py")
    verify_run(s3_root, manifest)
    assert f"run {manifest['run_id']}: 240 samples, 6 shards at {s3_root}" in logs


def test_failing_job_reports_its_error(cluster):
    status, logs = submit_and_wait(cluster["dashboard_url"],
                                   "python jobs/produce.py --config jobs/configs/produce.yaml --set count=0")
    assert status == "FAILED"
    assert "error: jobs/configs/produce.yaml: count: Input should be greater than 0" in logs
