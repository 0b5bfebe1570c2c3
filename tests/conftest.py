"""Shared fixtures. Storage tests run twice: on a temporary folder and on a real S3 HTTP endpoint
(moto's ThreadedMotoServer on 127.0.0.1, the same arrangement as s3fs's own test-suite)."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "medsynth-test-key",
    "AWS_SECRET_ACCESS_KEY": "medsynth-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A live S3 endpoint on loopback; the AWS variables point every client (and Ray worker) at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="medsynth-test")
    yield endpoint
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture
def s3_root(s3_endpoint) -> str:
    """A fresh, empty prefix in the test bucket."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://medsynth-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path) -> str:
    """A fresh, empty storage location: once a local folder, once an S3 prefix."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_root")


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One local Ray instance for the session, started after the S3 variables are set so that its
    workers inherit them (as pods inherit them from a Secret on a cluster). Metrics reach Ray's
    Prometheus endpoint within a second rather than ten (the pool's metrics test reads them there)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             _system_config={"metrics_report_interval_ms": 1000})
    yield ray
    ray.shutdown()


# The small judge the judge tests check and the run-report test measures with: trained once a session.
# Small and fast: 32 px phantoms, a few hundred studies, a few epochs (the default judge is 64 px,
# 5,000 studies; see docs or `medsynth evaluate judge`).
JUDGE_SIZE, JUDGE_COUNT, JUDGE_EPOCHS = 32, 600, 3


@pytest.fixture(scope="session")
def small_judge(tmp_path_factory):
    """(bundle url, JudgeResult) of a judge trained on JUDGE_COUNT phantoms."""
    from factory.evaluate.judge import train_judge

    out = str(tmp_path_factory.mktemp("judge") / "bundle")
    return out, train_judge(out, count=JUDGE_COUNT, size=JUDGE_SIZE, epochs=JUDGE_EPOCHS, seed=0, device="cpu",
                            progress=False)
