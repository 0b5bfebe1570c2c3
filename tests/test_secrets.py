"""No credential is written anywhere: a production run into the S3 endpoint (on the session's Ray, whose
workers got the test credentials from the environment), a bundle written there, and the commands that
read them back; then every object in the bucket, every file the commands wrote locally and every file of
this Ray session's log folder is searched for the access key and the secret."""

import json
from pathlib import Path

from conftest import S3_ENV

from factory import storage
from factory.cli import main

SECRETS = [S3_ENV["AWS_ACCESS_KEY_ID"].encode(), S3_ENV["AWS_SECRET_ACCESS_KEY"].encode()]


def holding_a_secret(named_bytes) -> list[str]:
    return [name for name, data in named_bytes if any(secret in data for secret in SECRETS)]


def test_no_credential_in_any_file_written(ray_local, s3_root, tmp_path, capsys):
    run, bundle = storage.join(s3_root, "run"), storage.join(s3_root, "bundle")
    assert main(["-v", "produce", "--source", "phantom-cxr", "--count", "6", "--size", "32", "--shard-size", "3",
                 "--out", run]) == 0
    assert main(["-v", "bundle", "init", "emixer", "--size", "32", "--width", "4", "--out", bundle]) == 0
    assert main(["-v", "inspect", run, "--sample", "4", "--out", str(tmp_path / "sample")]) == 0
    printed = capsys.readouterr()
    (tmp_path / "console.log").write_text(printed.out + printed.err)

    fs, root = storage.filesystem(s3_root)
    objects = [(path, fs.cat_file(path)) for path in fs.find(root)]
    names = {Path(path).name for path, _ in objects}
    assert {"manifest.json", "shard-000000.tar", "shard-000001.commit.json", "bundle.json",
            "weights.safetensors"} <= names, names
    assert json.loads(dict(objects)[f"{root}/run/manifest.json"])["count"] == 6
    local = [(str(p), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()]
    session = Path(ray_local._private.worker._global_node.get_session_dir_path())
    logs = [(str(p), p.read_bytes()) for p in (session / "logs").rglob("*") if p.is_file()]
    assert len(local) >= 3 and logs
    assert holding_a_secret([("control", b"x" + SECRETS[1] + b"x")]) == ["control"]  # the search finds one
    assert holding_a_secret(objects) == []
    assert holding_a_secret(local) == []
    assert holding_a_secret(logs) == []
