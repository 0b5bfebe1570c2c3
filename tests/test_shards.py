"""The shard writer: atomic shards, sidecars, manifest last, resume, byte-identical output, and
readers that know nothing of `factory` (plain webdataset, tarfile) on a folder and on S3."""

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from factory import storage
from factory.errors import FactoryError
from factory.run_manifest import read_manifest
from factory.produce.shards import shard_name, sidecar_name
from factory.produce.verify import verify_run
from factory.produce.writer import write_run
from factory.produce.card import CARD_NAME
from shard_helpers import samples, spec


def test_run_layout_and_manifest(storage_root):
    manifest = write_run(samples(), storage_root, spec(), progress=False)
    assert [s["name"] for s in manifest["shards"]] == [shard_name(i) for i in range(5)]
    assert [s["count"] for s in manifest["shards"]] == [5, 5, 5, 5, 3]
    assert manifest["count"] == 23 and manifest["requested"] == 23
    assert sum(manifest["label_histogram"].values()) == 23
    names = storage.list_names(storage_root)
    assert names == sorted(["manifest.json", CARD_NAME] + [shard_name(i) for i in range(5)] + [sidecar_name(i) for i in range(5)])
    assert read_manifest(storage_root) == manifest
    verify_run(storage_root, manifest)
    sidecar = json.loads(storage.read_bytes(storage.join(storage_root, sidecar_name(4))))
    assert sidecar == manifest["shards"][4]
    assert sidecar["sha256"] == storage.sha256(storage.join(storage_root, shard_name(4)))


def test_failure_mid_shard_leaves_no_partial_shard_and_rerun_completes(storage_root):
    with pytest.raises(RuntimeError, match="sample 12"):
        write_run(samples(fail_at=12), storage_root, spec(), progress=False)
    names = storage.list_names(storage_root)
    # shards 0 and 1 (samples 0-9) committed; shard 2 (10-14) died at 12: nothing of it, no manifest
    assert names == sorted([shard_name(0), shard_name(1), sidecar_name(0), sidecar_name(1)])
    first_bytes = storage.read_bytes(storage.join(storage_root, shard_name(0)))
    manifest = write_run(samples(), storage_root, spec(), progress=False)
    assert manifest["count"] == 23 and len(manifest["shards"]) == 5
    assert storage.read_bytes(storage.join(storage_root, shard_name(0))) == first_bytes
    verify_run(storage_root, manifest)


def test_iterator_that_ends_early_publishes_nothing_for_that_shard(tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(FactoryError, match="samples ended before slot 13"):
        write_run(samples(count=13), out, spec(), progress=False)
    assert shard_name(2) not in storage.list_names(out)
    assert "manifest.json" not in storage.list_names(out)


def test_same_input_gives_byte_identical_shards(tmp_path):
    first = write_run(samples(), str(tmp_path / "a"), spec(), progress=False)
    second = write_run(samples(), str(tmp_path / "b"), spec(), progress=False)
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    for i in range(5):
        assert (tmp_path / "a" / shard_name(i)).read_bytes() == (tmp_path / "b" / shard_name(i)).read_bytes()


def test_different_run_is_refused_and_nothing_overwritten(tmp_path):
    out = str(tmp_path / "run")
    write_run(samples(), out, spec(), progress=False)
    before = {n: (tmp_path / "run" / n).read_bytes() for n in storage.list_names(out)}
    with pytest.raises(FactoryError, match="another configuration"):
        write_run(samples(seed=8), out, spec(seed=8), progress=False)
    assert {n: (tmp_path / "run" / n).read_bytes() for n in storage.list_names(out)} == before


def test_finished_run_is_returned_not_rewritten(tmp_path):
    out = str(tmp_path / "run")
    manifest = write_run(samples(), out, spec(), progress=False)
    assert write_run(iter(()), out, spec(), progress=False) == manifest


def test_tar_members_are_reproducible_ustar(tmp_path):
    out = str(tmp_path / "run")
    write_run(samples(), out, spec(), progress=False)
    with tarfile.open(tmp_path / "run" / shard_name(0)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:4]] == [
        "test-run-0000000000.cls", "test-run-0000000000.json", "test-run-0000000000.png", "test-run-0000000000.txt"]
    assert {(m.mtime, m.uid, m.gid, m.mode) for m in members} == {(0, 0, 0, 0o444)}
    assert all(len(m.name) <= 100 and not m.pax_headers for m in members)


def test_sixteen_bit_images_round_trip(tmp_path):
    out = str(tmp_path / "run")
    write_run(samples(count=5, bit_depth=16), out, spec(count=5), progress=False)
    with tarfile.open(tmp_path / "run" / shard_name(0)) as tar:
        png = tar.extractfile("test-run-0000000003.png").read()
        meta = json.loads(tar.extractfile("test-run-0000000003.json").read())
    expected = next(s for s in samples(count=5, bit_depth=16) if s.index == 3).images["png"]
    assert np.array_equal(np.array(Image.open(io.BytesIO(png))), expected)
    assert meta["image"] == {"height": 16, "width": 12, "bit_depth": 16}


PLAIN_READER = r"""
import json, sys, tarfile, io
import fsspec, webdataset as wds
assert "factory" not in sys.modules
root, names = sys.argv[1], json.loads(sys.argv[2])
urls = [f"{root}/{n}" for n in names]
if root.startswith("s3://"):
    import s3fs
    fs = s3fs.S3FileSystem()
    wds_urls = [f"pipe:{sys.executable} -c \"import s3fs,sys,shutil; shutil.copyfileobj(s3fs.S3FileSystem().open(sys.argv[1]), sys.stdout.buffer)\" {u}" for u in urls]
    opener = fs.open
else:
    wds_urls, opener = urls, open
via_wds = [{k: (v.hex() if isinstance(v, bytes) else v) for k, v in s.items() if k == "__key__" or not k.startswith("__")}
           for s in wds.WebDataset(wds_urls, shardshuffle=False)]
via_tar = {}
for u in urls:
    with opener(u, "rb") as f, tarfile.open(fileobj=io.BytesIO(f.read())) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            via_tar.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read().hex()
print(json.dumps({"wds": via_wds, "tar": list(via_tar.values())}))
"""


def test_plain_webdataset_and_tarfile_read_identical_keys_and_bytes(storage_root):
    manifest = write_run(samples(), storage_root, spec(), progress=False)
    names = [s["name"] for s in manifest["shards"]]
    result = subprocess.run([sys.executable, "-c", PLAIN_READER, storage_root, json.dumps(names)],
                            capture_output=True, text=True, check=True)
    read = json.loads(result.stdout)
    assert [s["__key__"] for s in read["wds"]] == [f"test-run-{i:010d}" for i in range(23)]
    assert read["wds"] == read["tar"]
    expected = {s.index: s for s in samples()}
    for sample in read["wds"]:
        index = int(sample["__key__"].rsplit("-", 1)[1])
        assert bytes.fromhex(sample["txt"]).decode() == expected[index].report
        assert int(bytes.fromhex(sample["cls"])) == expected[index].label
        png = Image.open(io.BytesIO(bytes.fromhex(sample["png"])))
        assert np.array_equal(np.array(png), expected[index].images["png"])
        assert json.loads(bytes.fromhex(sample["json"]))["index"] == index


def test_schemas_list_exactly_the_sample_kinds_producers_make():
    """A kind the schemas allow but no producer makes (or one a producer makes that they refuse) is drift."""
    import typing

    from factory.produce.producer_specs import ProducerSpec
    from factory.produce.samples import SAMPLE_MEMBERS
    from factory.validation import validator

    specs = typing.get_args(typing.get_args(ProducerSpec)[0])
    made = {spec.sample_kind for spec in specs}
    sample_kinds = set(validator("sample").schema["properties"]["kind"]["enum"])
    manifest_kinds = set(validator("manifest").schema["properties"]["sample_kind"]["enum"])
    assert made == set(SAMPLE_MEMBERS) == sample_kinds == manifest_kinds
