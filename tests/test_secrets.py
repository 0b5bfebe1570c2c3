"""No credential is written anywhere: a production run into the S3 endpoint (on the session's Ray, whose
workers got the test credentials from the environment), a bundle written there, and the commands that
read them back; then every object in the bucket, every file the commands wrote locally and every file of
this Ray session's log folder is searched for the access key and the secret. A slow test does the same for
a Ray Train run stored on S3 (checkpoints, Ray Train's own state files, TensorBoard events, the exported
bundle) and for evaluation writing there (a judge bundle, the HTML report and its JSON)."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import S3_ENV

from factory import storage
from factory.cli import main

SECRETS = [S3_ENV["AWS_ACCESS_KEY_ID"].encode(), S3_ENV["AWS_SECRET_ACCESS_KEY"].encode()]


def holding_a_secret(named_bytes) -> list[str]:
    return [name for name, data in named_bytes if any(secret in data for secret in SECRETS)]


def searched(ray_local, s3_root, tmp_path):
    """(every object under s3_root, every local file under tmp_path, every file of the Ray session's logs)."""
    fs, root = storage.filesystem(s3_root)
    objects = [(path, fs.cat_file(path)) for path in fs.find(root)]
    local = [(str(p), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()]
    session = Path(ray_local._private.worker._global_node.get_session_dir_path())
    logs = [(str(p), p.read_bytes()) for p in (session / "logs").rglob("*") if p.is_file()]
    return objects, local, logs


def test_no_credential_in_any_file_written(ray_local, s3_root, tmp_path, capsys):
    run, bundle = storage.join(s3_root, "run"), storage.join(s3_root, "bundle")
    assert main(["-v", "produce", "--source", "phantom-cxr", "--count", "6", "--size", "32", "--shard-size", "3",
                 "--out", run]) == 0
    assert main(["-v", "bundle", "init", "emixer", "--size", "32", "--width", "4", "--out", bundle]) == 0
    assert main(["-v", "inspect", run, "--sample", "4", "--out", str(tmp_path / "sample")]) == 0
    printed = capsys.readouterr()
    (tmp_path / "console.log").write_text(printed.out + printed.err)

    objects, local, logs = searched(ray_local, s3_root, tmp_path)
    root = storage.filesystem(s3_root)[1]
    names = {Path(path).name for path, _ in objects}
    assert {"manifest.json", "shard-000000.tar", "shard-000001.commit.json", "bundle.json",
            "weights.safetensors"} <= names, names
    assert json.loads(dict(objects)[f"{root}/run/manifest.json"])["count"] == 6
    assert len(local) >= 3 and logs
    assert holding_a_secret([("control", b"x" + SECRETS[1] + b"x")]) == ["control"]  # the search finds one
    assert holding_a_secret(objects) == []
    assert holding_a_secret(local) == []
    assert holding_a_secret(logs) == []


TINY_EMIXER = {"g_width": 8, "d_width": 8, "f_width": 8, "hidden": 32, "word_embedding": 32, "image_feature": 32,
               "d_text_hidden": 32}


@pytest.mark.slow
def test_no_credential_in_training_or_evaluation_outputs(ray_local, s3_root, tmp_path, capsys, monkeypatch):
    """A two-worker Ray Train run stored on S3 (checkpoints, Ray Train's state, TensorBoard events, a snapshot
    and the exported bundle), then a judge trained into S3 and a run's report written there. Slow: a second
    Ray Train run beside test_train's (about a minute)."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")  # as in test_train
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "name": "secrets", "storage_path": storage.join(s3_root, "runs"), "steps": 4, "checkpoint_every": 2,
        "snapshot_every": 3, "log_every": 1, "batch_size": 8, "workers": 2, "zero_stage": 2, "model": TINY_EMIXER,
        "data": {"count": 48, "size": 32, "min_word_count": 2}, "bundle_out": storage.join(s3_root, "bundle")}))
    run, judge = storage.join(s3_root, "run"), storage.join(s3_root, "judge")
    assert main(["-v", "train", str(config)]) == 0
    assert main(["-v", "produce", "--source", "phantom-cxr", "--count", "24", "--size", "32", "--shard-size", "12",
                 "--out", run]) == 0
    assert main(["-v", "evaluate", "judge", "--out", judge, "--count", "120", "--size", "32", "--epochs", "1",
                 "--arch", "resnet10", "--device", "cpu"]) == 0
    assert main(["-v", "evaluate", run, "--judge", judge, "--out", storage.join(s3_root, "report", "report.html"),
                 "--count", "24", "--real-count", "24"]) == 0
    printed = capsys.readouterr()
    (tmp_path / "console.log").write_text(printed.out + printed.err)

    objects, local, logs = searched(ray_local, s3_root, tmp_path)
    names = {Path(path).name for path, _ in objects}
    folders = {Path(path).parent.name for path, _ in objects}
    assert {"bundle.json", "weights.safetensors", "report.html", "report.json", "manifest.json",
            "runner_state.json"} <= names, names
    assert any(name.startswith("events.out.tfevents.") for name in names), names
    assert any(folder.startswith("checkpoint_") for folder in folders) and "step-000003" in folders, folders
    assert holding_a_secret(objects) == []
    assert holding_a_secret(local) == []
    assert holding_a_secret(logs) == []
