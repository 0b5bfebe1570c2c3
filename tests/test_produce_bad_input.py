"""`medsynth produce` and `translate` refuse unusable input before Ray starts, as one line with exit code
2: label counts that do not apply or cannot be used, and an --out that cannot be written (local or S3).
A store that fails mid-run stops the run in one line, with the committed shards kept."""

import time

import pytest
from conftest import free_port

from factory import storage
from factory.cli import job_main, main
from factory.config import ProduceConfig
from factory.errors import StorageError
from factory.produce.pool import ShardWorker
from factory.produce.producer_specs import PhantomPairs
from factory.produce.shards import RunSpec, shard_name
from factory.produce.writer import committed_shards

PHANTOM = ["produce", "--source", "phantom-cxr", "--count", "4", "--size", "32"]


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Every refusal here comes before the pool: connecting to Ray fails the test."""
    def refuse():
        raise AssertionError("Ray was started")

    monkeypatch.setattr("factory.produce.pool.connect_ray", refuse)


def refused(argv, capsys) -> tuple[str, float]:
    """(the one stderr line, seconds taken) of a command that must exit with code 2."""
    start = time.monotonic()
    assert main(argv) == 2
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip(), elapsed


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from factory.models.cli import init_bundle

    url = str(tmp_path_factory.mktemp("bundle") / "emixer")
    init_bundle(url, "emixer", size=32, width=8, seed=1)
    return url


LABEL_FILES = {
    "missing": (None, "cannot read label counts (No such file or directory)"),
    "not-yaml": ("{ not: [yaml", "not valid YAML/JSON: line 1, column 13: expected ',' or ']', but got '<stream end>'"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe", "not valid YAML/JSON (not UTF-8 text)"),
    "not-counts": ("- Edema\n- Cardiomegaly\n", "must map label combinations"),
    "yes-no": ("Edema: yes\nNo Finding: 3\n", "must map label combinations"),
    "unknown": ("Cardiomegally: 2\nEdema+Pleural Effusion: 1\nNo Finding: 1\n", "unknown labels ['Cardiomegally']"),
}


def label_file(tmp_path, kind) -> str:
    content, _ = LABEL_FILES[kind]
    path = tmp_path / f"{kind}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    return str(path)


@pytest.mark.parametrize("kind", [*LABEL_FILES, "prior"])
def test_phantom_runs_refuse_labels(kind, tmp_path, capsys):
    labels = "prior" if kind == "prior" else label_file(tmp_path, kind)
    line, _ = refused([*PHANTOM, "--out", str(tmp_path / "run"), "--labels", labels], capsys)
    assert line == ("medsynth produce: error: command line: labels: Value error, the phantom source draws its "
                    "own findings; labels apply to bundle runs")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", LABEL_FILES)
def test_bundle_runs_refuse_unusable_label_counts(kind, bundle, tmp_path, capsys):
    labels = label_file(tmp_path, kind)
    line, _ = refused(["produce", "--bundle", bundle, "--count", "4", "--out", str(tmp_path / "run"),
                       "--labels", labels], capsys)
    assert line.startswith(f"medsynth produce: error: {labels}: ") and LABEL_FILES[kind][1] in line, line
    assert not (tmp_path / "run").exists()  # nor does the write check leave a folder behind


def test_prior_policy_needs_a_bundle_that_records_one(bundle, tmp_path, capsys):
    line, _ = refused(["produce", "--bundle", bundle, "--count", "4", "--out", str(tmp_path / "run"),
                       "--labels", "prior"], capsys)
    assert line == ("medsynth produce: error: --labels prior: this bundle records no training label prior; "
                    "use balanced or explicit counts per combination")


def test_phantom_runs_keep_the_default_label_policy():
    assert ProduceConfig(source="phantom-cxr", count=1, out="x", labels="balanced").labels == "balanced"


def unusable_local_outs(tmp_path):
    (tmp_path / "file").write_text("a file")
    return {"/proc/medsynth-out": "No such file or directory", str(tmp_path / "file" / "sub"): "Not a directory",
            str(tmp_path / "file"): "File exists"}


@pytest.mark.parametrize("command", ["produce", "translate"])
def test_unusable_local_out_is_refused_before_ray(command, tmp_path, capsys):
    for out, problem in unusable_local_outs(tmp_path).items():
        argv = ([*PHANTOM, "--out", out] if command == "produce" else
                ["translate", "--bundle", str(tmp_path / "no-bundle"), "--source", str(tmp_path / "no-data"),
                 "--out", out])
        line, elapsed = refused(argv, capsys)
        assert line == f"medsynth {command}: error: {out}: cannot write here: {problem}"
        assert elapsed < 2


def test_job_entrypoint_refuses_an_unusable_out(tmp_path, capsys):
    from jobs.produce import run

    config = tmp_path / "produce.yaml"
    config.write_text(f"out: {tmp_path / 'file' / 'sub'}\nsource: phantom-cxr\ncount: 4\n")
    (tmp_path / "file").write_text("a file")
    assert job_main(ProduceConfig, run, ["--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'file' / 'sub'}: cannot write here: Not a directory"


def test_s3_out_without_a_bucket(s3_endpoint, capsys):
    line, _ = refused([*PHANTOM, "--out", "s3://"], capsys)
    assert line == "medsynth produce: error: s3://: names no bucket (expected s3://BUCKET/PREFIX)"


def test_s3_bucket_that_does_not_exist(s3_endpoint, capsys):
    line, elapsed = refused([*PHANTOM, "--out", "s3://medsynth-no-such-bucket/run"], capsys)
    assert line == ("medsynth produce: error: s3://medsynth-no-such-bucket/run: cannot write here: "
                    "the bucket does not exist")
    assert elapsed < 5


def test_s3_wrong_keys_are_refused_without_showing_them(s3_root, monkeypatch, capsys):
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the endpoint checks signatures
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAMEDSYNTHWRONGKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-never-printed")
    line, elapsed = refused([*PHANTOM, "--out", s3_root], capsys)
    assert line == (f"medsynth produce: error: {s3_root}: cannot write here: the object store does not know "
                    "this access key (AWS_ACCESS_KEY_ID)")
    assert elapsed < 5


def test_s3_without_credentials(s3_root, monkeypatch, tmp_path, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    # Nowhere else to look: no files, and no instance metadata service (it is not on loopback).
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    line, elapsed = refused([*PHANTOM, "--out", s3_root], capsys)
    assert line == (f"medsynth produce: error: {s3_root}: cannot write here: no S3 credentials found "
                    "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    assert elapsed < 5


def test_s3_closed_endpoint_is_reported_within_seconds(s3_root, monkeypatch, capsys):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    line, elapsed = refused([*PHANTOM, "--out", s3_root], capsys)
    assert line.startswith(f"medsynth produce: error: {s3_root}: cannot write here: cannot reach the object "
                           f'store (Could not connect to the endpoint URL: "{endpoint}/'), line
    assert elapsed < 10


def test_endpoint_lost_mid_run_stops_in_one_line_and_keeps_committed_shards(s3_endpoint, s3_root, monkeypatch):
    """The actors' write path, without Ray: shard 0 commits, the endpoint goes, shard 1 fails naming itself."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # the same in-process store
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # a run's full retries would take about 14 s here
    producer = PhantomPairs(size=32)
    spec = RunSpec(run_id="lost-endpoint", requested=20, shard_size=10, seed=1, sample_kind="pair",
                   config={"producer": producer.echo()}, command="pytest")
    worker = ShardWorker(producer, s3_root, spec, batch_size=10)
    try:
        worker.write(0)
    finally:
        server.stop()
    with pytest.raises(StorageError) as caught:
        worker.write(1)
    assert str(caught.value).startswith(f"{storage.join(s3_root, shard_name(1))}: cannot reach the object store")
    assert str(caught.value).endswith("; committed shards are kept, run the same command again to resume")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert list(committed_shards(s3_root, spec)) == [0]


def test_resuming_after_the_bundle_was_replaced_names_the_bundle(tmp_path):
    import shutil

    from factory.errors import BadInputError
    from factory.models.cli import init_bundle
    from factory.produce.runs import production_spec
    from factory.produce.shards import write_shard

    bundle, other, out = tmp_path / "bundle", tmp_path / "other", str(tmp_path / "run")
    init_bundle(str(bundle), "emixer", size=32, width=4, seed=1)
    init_bundle(str(other), "emixer", size=32, width=4, seed=2)
    config = ProduceConfig(bundle=str(bundle), count=8, shard_size=4, out=out)
    producer, spec = production_spec(config)
    write_shard(out, spec, 0, producer.build(spec.seed).make_batch(range(4)))  # a run stopped after one shard
    for name in ("bundle.json", "weights.safetensors"):
        shutil.copyfile(other / name, bundle / name)
    _, replanned = production_spec(config)
    with pytest.raises(BadInputError, match=rf"^{bundle}/bundle.json: is not the bundle run {spec.run_id} at "):
        committed_shards(out, replanned)
