"""`medsynth inspect` and the one-line errors on bad runs: each names the file and the problem,
exits non-zero, and leaves every stored byte as it was."""

import hashlib
import io
import json
import pickle
import socket
import subprocess
import sys
import tarfile

import pytest

from factory import storage
from factory.cli import main
from factory.errors import BadInputError
from factory.produce.inspect import timing_lines
from factory.produce.samples import sample_key
from factory.produce.shards import read_tar_members, shard_name, sidecar_name
from factory.produce.verify import verify_run
from factory.produce.writer import write_run
from factory.run_manifest import manifest_url
from factory.validation import parse_json, validate
from shard_helpers import samples, spec


@pytest.fixture
def run_url(storage_root):
    write_run(samples(), storage_root, spec(), progress=False)
    return storage_root


def snapshot(url):
    return {name: storage.read_bytes(storage.join(url, name)) for name in storage.list_names(url)}


def test_inspect_summary(run_url, capsys):
    assert main(["inspect", run_url]) == 0
    out = capsys.readouterr().out
    for text in ("test-run", "schema         1.0", "command        pytest", "5 x up to 5 samples",
                 "23 of 23 requested", "sha256 and tar contents match", "No Finding", "samples/s per writer",
                 "samples/s overall", f"  {socket.gethostname()}  "):
        assert text in out


def test_inspect_sums_shard_times_and_rates_by_node():
    def record(index, count, seconds, finished, node):
        return {"index": index, "count": count, "seconds": seconds, "node": node,
                "finished_at": f"2026-01-01T00:00:{finished:06.3f}+00:00"}

    shards = [record(0, 100, 2.0, 2.0, "a"), record(1, 100, 3.0, 4.0, "b"), record(2, 50, 1.0, 5.0, "a"),
              {"index": 3, "count": 10}]  # a record written before commits carried times
    lines = timing_lines(shards)
    assert lines[0] == ("timing         3 of 4 shards: 6.0 s writing shards, mean 2.00 s a shard (min 1.00, max 3.00), "
                        "41.7 samples/s per writer")
    assert lines[1] == "wall           5.0 s from the first shard's start to the last commit, 50.0 samples/s overall"
    assert lines[2:] == ["by node", "  node  shards   samples   seconds  samples/s per writer",
                         "  a          2       150       3.0  50.0", "  b          1       100       3.0  33.3"]


def test_a_run_whose_records_predate_times_and_nodes_still_verifies(tmp_path, capsys):
    """Commit records written before `seconds`, `finished_at` and `node` existed: valid, verified, and
    inspect says the timing was not recorded."""
    run_url = str(tmp_path / "run")
    write_run(samples(), run_url, spec(), progress=False)
    manifest = json.loads(storage.read_bytes(manifest_url(run_url)))
    for record in manifest["shards"]:
        for key in ("seconds", "finished_at", "node"):
            del record[key]
        sidecar = storage.join(run_url, sidecar_name(record["index"]))
        storage.atomic_put(sidecar, json.dumps(record).encode())
        validate(record, "shard", sidecar)
    storage.atomic_put(manifest_url(run_url), json.dumps(manifest).encode())
    assert main(["inspect", run_url]) == 0
    assert "timing         not recorded (the shards' commit records predate it)" in capsys.readouterr().out


def test_inspect_one_sample(run_url, tmp_path, capsys):
    out_dir = tmp_path / "sample"
    assert main(["inspect", run_url, "--sample", "7", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "FINDINGS: sample 7." in printed and '"index": 7' in printed
    expected = next(s for s in samples() if s.index == 7)
    assert (out_dir / "test-run-0000000007.txt").read_text() == expected.report
    assert (out_dir / "test-run-0000000007.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def corrupt_manifest_not_json(url):
    storage.atomic_put(storage.join(url, "manifest.json"), b"{ this is not json")
    return "manifest.json: not valid JSON"


def corrupt_schema_version(url):
    manifest = json.loads(storage.read_bytes(storage.join(url, "manifest.json")))
    manifest["schema_version"] = "9.9"
    storage.atomic_put(storage.join(url, "manifest.json"), json.dumps(manifest).encode())
    return "manifest.json: schema_version '9.9' is not supported"


def corrupt_missing_shard(url):
    storage.remove(storage.join(url, shard_name(2)))
    return f"{shard_name(2)}: listed as committed but missing"


def corrupt_sha256(url):
    shard = storage.join(url, shard_name(1))
    data = bytearray(storage.read_bytes(shard))
    data[700] ^= 0xFF
    storage.atomic_put(shard, bytes(data))
    return f"{shard_name(1)}: sha256"


def corrupt_truncated_tar(url):
    shard = storage.join(url, shard_name(3))
    storage.atomic_put(shard, storage.read_bytes(shard)[:3000])
    return f"{shard_name(3)}: is 3000 bytes, its record says"


def corrupt_field(url):
    manifest = json.loads(storage.read_bytes(storage.join(url, "manifest.json")))
    manifest["shards"][3]["sha256"] = "not-a-hash"
    storage.atomic_put(storage.join(url, "manifest.json"), json.dumps(manifest).encode())
    return "manifest.json: shards[3].sha256: 'not-a-hash' does not match"


def corrupt_foreign_member(url):
    """Shard 1 gains a pickle member (plain webdataset's .decode() would unpickle it), its sample's
    members still adjacent, and its size and sha256 are updated in the sidecar and the manifest."""
    shard = storage.join(url, shard_name(1))
    members = read_tar_members(storage.read_bytes(shard), shard)
    name = f"{sample_key('test-run', 5)}.pyd"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in [*members[:4], (name, pickle.dumps({"payload": 1})), *members[4:]]:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    storage.atomic_put(shard, data)
    sidecar = storage.join(url, sidecar_name(1))
    record = {**json.loads(storage.read_bytes(sidecar)), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    storage.atomic_put(sidecar, json.dumps(record).encode())
    manifest = json.loads(storage.read_bytes(manifest_url(url)))
    manifest["bytes"] += record["bytes"] - manifest["shards"][1]["bytes"]
    manifest["shards"][1] = record
    storage.atomic_put(manifest_url(url), json.dumps(manifest).encode())
    return f"{shard_name(1)}: member {name} is not one the format defines for pair samples"


@pytest.mark.parametrize("corrupt", [corrupt_manifest_not_json, corrupt_schema_version, corrupt_missing_shard,
                                     corrupt_sha256, corrupt_truncated_tar, corrupt_field, corrupt_foreign_member])
def test_bad_run_gives_one_line_error_and_changes_nothing(run_url, corrupt, capsys):
    expected = corrupt(run_url)
    before = snapshot(run_url)
    assert main(["inspect", run_url]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    error_line = err.splitlines()[-1].split("\r")[-1]  # after the progress bar, if any
    assert error_line.startswith("medsynth inspect: error: ") and expected in error_line, err
    assert snapshot(run_url) == before


def test_resume_over_an_unreadable_manifest_refuses_and_keeps_everything(run_url):
    corrupt_manifest_not_json(run_url)
    before = snapshot(run_url)
    with pytest.raises(BadInputError, match="manifest.json: not valid JSON"):
        write_run(samples(), run_url, spec(), progress=False)
    assert snapshot(run_url) == before


def test_resume_writes_again_a_shard_with_a_foreign_member(tmp_path):
    out = str(tmp_path / "run")
    write_run(samples(), out, spec(), progress=False)
    original = (tmp_path / "run" / shard_name(1)).read_bytes()
    corrupt_foreign_member(out)
    storage.remove(manifest_url(out))  # unfinished again: resuming verifies the committed shards
    manifest = write_run(samples(), out, spec(), progress=False)
    assert (tmp_path / "run" / shard_name(1)).read_bytes() == original
    verify_run(out, manifest)


def test_truncated_tar_with_matching_record_is_caught(tmp_path):
    """Even when the record agrees with a truncated file, the tar reader rejects it."""
    write_run(samples(), str(tmp_path), spec(), progress=False)
    data = (tmp_path / shard_name(0)).read_bytes()
    with pytest.raises(BadInputError, match="truncated"):
        read_tar_members(data[:2048], "shard.tar")
    with pytest.raises(BadInputError, match="truncated"):
        read_tar_members(data[:1000], "shard.tar")


def test_not_a_run(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "manifest.json: no manifest" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    result = subprocess.run([sys.executable, "-m", "factory", "inspect", str(tmp_path / "none")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "no manifest" in result.stderr and "Traceback" not in result.stderr


def test_schema_errors_name_file_and_field():
    with pytest.raises(BadInputError, match=r"^bundle\.json: files\[0\]\.sha256: "):
        validate({"schema_version": "1.0", "bundle_id": "b", "recipe": "emixer", "created_at": "2026-01-01T00:00:00Z",
                  "model_config": {}, "label_names": [], "training_data": {"fingerprint": "x"}, "metrics": {},
                  "files": [{"name": "w.safetensors", "bytes": 1, "sha256": "zz"}], "sha256": "0" * 64},
                 "bundle", "bundle.json")
    with pytest.raises(BadInputError, match=r"^s\.json: source: 'bundle_id' is a required property"):
        parse_json(json.dumps({"schema_version": "1.0", "run_id": "r", "index": 0, "seed": 0, "kind": "pair",
                               "source": {"kind": "bundle", "recipe": "emixer"}}), "sample", "s.json")
    with pytest.raises(BadInputError, match="run_id"):
        validate({"schema_version": "1.0", "run_id": "Has.Dots", "index": 0, "seed": 0, "kind": "pair",
                  "source": {"kind": "phantom", "recipe": "x"}}, "sample", "s.json")


def _tiny_bundle(url: str) -> dict:
    import torch

    from factory.models.bundle import write_bundle

    return write_bundle(url, "toy", {"G": torch.nn.Linear(2, 3)}, {"image_size": 16}, ["No Finding", "Edema"],
                        None, {"fingerprint": "f" * 64, "count": 12}, {"steps": 7.0, "g_loss": 0.25}, trained=True)


def test_inspect_a_bundle_verifies_and_summarises_it(storage_root, capsys):
    metadata = _tiny_bundle(storage_root)
    assert main(["inspect", storage_root]) == 0
    out = capsys.readouterr().out
    for text in (metadata["bundle_id"], "model          toy", "image size     16", "No Finding, Edema",
                 "12 samples", "7 steps", "g_loss 0.25", "every file's size and sha256"):
        assert text in out
    assert main(["inspect", storage_root, "--sample", "0", "--out", "x"]) == 2
    assert "a generator bundle has no samples" in capsys.readouterr().err


def test_inspect_refuses_a_bundle_with_changed_weights_naming_the_file(tmp_path, capsys):
    url = str(tmp_path / "bundle")
    _tiny_bundle(url)
    weights = tmp_path / "bundle" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert main(["inspect", url, "--quick"]) == 0  # metadata alone still checks out
    capsys.readouterr()
    assert main(["inspect", url]) == 2
    assert "weights.safetensors:" in capsys.readouterr().err and weights.read_bytes() == bytes(data)


def test_inspect_reads_a_bundle_without_torch(tmp_path):
    # `medsynth inspect` needs no extra (factory/cli.py), and the base install has no torch: hide it.
    url = str(tmp_path / "bundle")
    metadata = _tiny_bundle(url)
    code = ("import sys; sys.modules['torch'] = None\n"
            f"from factory.cli import main; raise SystemExit(main(['inspect', {url!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert metadata["bundle_id"] in result.stdout
