"""factory.storage on a local folder and on a live S3 endpoint (each test runs on both)."""

import hashlib

import pytest

from factory import storage
from factory.errors import BadInputError


def test_put_read_list_size_sha(storage_root):
    data = b"medsynth" * 1000
    url = storage.join(storage_root, "a", "object.bin")
    assert not storage.exists(url)
    storage.atomic_put(url, data)
    assert storage.exists(url)
    assert storage.read_bytes(url) == data
    assert storage.size(url) == len(data)
    assert storage.sha256(url) == hashlib.sha256(data).hexdigest()
    storage.atomic_put(storage.join(storage_root, "a", "second.bin"), b"x")
    assert storage.list_names(storage.join(storage_root, "a")) == ["object.bin", "second.bin"]
    with storage.open_file(url) as f:
        assert f.read(8) == b"medsynth"


def test_failed_write_leaves_nothing(storage_root):
    url = storage.join(storage_root, "partial.bin")
    with pytest.raises(RuntimeError):
        with storage.atomic_writer(url) as f:
            f.write(b"half of it")
            raise RuntimeError("producer died")
    assert not storage.exists(url)
    assert storage.list_names(storage_root) == []


def test_failed_rewrite_keeps_previous_version(storage_root):
    url = storage.join(storage_root, "kept.bin")
    storage.atomic_put(url, b"version 1")
    with pytest.raises(RuntimeError):
        with storage.atomic_writer(url) as f:
            f.write(b"version 2, incomplete")
            raise RuntimeError("interrupted")
    assert storage.read_bytes(url) == b"version 1"


def test_large_multipart_upload_is_atomic(s3_root):
    """Over s3fs's block size the upload is multipart: aborted on error, complete on success."""
    url = storage.join(s3_root, "big.bin")
    chunk = b"\x01" * (6 << 20)
    with pytest.raises(RuntimeError):
        with storage.atomic_writer(url, {"default_block_size": 5 << 20}) as f:
            f.write(chunk)
            f.write(chunk)
            raise RuntimeError("stop")
    assert not storage.exists(url)
    with storage.atomic_writer(url, {"default_block_size": 5 << 20}) as f:
        f.write(chunk)
        f.write(chunk)
    assert storage.size(url) == 2 * len(chunk)


def test_missing_object_names_the_url(storage_root):
    url = storage.join(storage_root, "nope.bin")
    with pytest.raises(BadInputError, match="nope.bin: not found"):
        storage.read_bytes(url)
    assert storage.list_names(storage.join(storage_root, "no-such-folder")) == []


def test_memory_and_file_urls(tmp_path):
    for root in ("memory://medsynth-test-store", f"file://{tmp_path}"):
        url = storage.join(root, "x", "y.txt")
        storage.atomic_put(url, b"hello")
        assert storage.read_bytes(url) == b"hello"
        assert storage.list_names(storage.join(root, "x")) == ["y.txt"]


def test_s3_options_from_environment():
    env = {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": "eu-central-1",
        "AWS_ENDPOINT_URL": "http://minio.storage.svc:9000",
    }
    assert storage.s3_options_from_env(env) == {
        "key": "AKIDEXAMPLE",
        "secret": "secret",
        "endpoint_url": "http://minio.storage.svc:9000",
        "client_kwargs": {"region_name": "eu-central-1"},
    }
    assert storage.s3_options_from_env({}) == {}


def test_explicit_options_win_over_environment(s3_root, monkeypatch):
    """Explicit storage options override the environment key by key: a wrong key fails."""
    url = storage.join(s3_root, "k.bin")
    storage.atomic_put(url, b"1")
    fs, _ = storage.filesystem(url, {"key": "someone-else", "skip_instance_cache": True})
    assert fs.key == "someone-else"
    assert fs.endpoint_url == storage.s3_options_from_env()["endpoint_url"]


def test_errors_survive_pickling_across_processes():
    import pickle

    from factory.errors import BadInputError, IntegrityError, StorageError

    for error in (BadInputError("a/b.png", "not an image"), IntegrityError("s.tar", "sha256 differs"),
                  StorageError("s3://b/run", "cannot write here: the bucket does not exist")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and copy.source == error.source


def test_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("runs/x") == str(tmp_path / "runs" / "x")
    assert storage.absolute("s3://bucket/runs") == "s3://bucket/runs"


def test_write_check_passes_and_leaves_nothing(storage_root):
    url = storage.join(storage_root, "runs", "one")
    storage.check_writable(url)
    assert not storage.exists(storage.join(storage_root, "runs"))  # local folders made for the probe go too
    storage.atomic_put(storage.join(url, "kept.bin"), b"1")
    storage.check_writable(url)  # an existing folder passes too
    assert storage.list_names(url) == ["kept.bin"]


def test_storage_problems_are_plain_words():
    from botocore.exceptions import ClientError

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject")
    translated = PermissionError("Access Denied")
    translated.__cause__ = denied  # as s3fs raises it
    assert storage.storage_problem(denied) == storage.storage_problem(translated) == \
        "access denied: the credentials may not write here"
    odd = ClientError({"Error": {"Code": "SlowDown", "Message": "Please\nreduce your request rate."}}, "PutObject")
    assert storage.storage_problem(odd) == "the object store refused the request: SlowDown Please reduce your request rate."
    assert storage.storage_problem(OSError(28, "No space left on device")) == "No space left on device"
    assert storage.storage_problem(ValueError("a bug")) is None
