"""factory.stream: runs read back through webdataset from a folder and from a live S3 endpoint —
decoding (8- and 16-bit), label filters, seeded shuffling, exactly-once splits across ranks x
DataLoader workers, resampling, real/synthetic mixing, collate."""

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from factory import storage
from factory.data.labels import CXR_LABELS
from factory.data.phantoms.dataset import PhantomCxrDataset
from factory.errors import BadInputError, FactoryError, IntegrityError
from factory.produce.producers import phantom_pairs
from factory.produce.samples import Sample
from factory.produce.shards import shard_name
from factory.produce.writer import write_run
from factory.stream import collate, mix, open_run, resolve_topology, study_samples
from shard_helpers import LABELS, samples, spec

KEYS = [f"test-run-{i:010d}" for i in range(23)]


def make_run(url, count=23, shard_size=5, run_id="test-run", seed=7):
    write_run(samples(count=count, seed=seed), url, spec(count=count, shard_size=shard_size, run_id=run_id, seed=seed),
              progress=False)
    return url


def keys(stream):
    return [sample["__key__"] for sample in stream]


def test_decode_eight_bit_pairs(storage_root):
    run = open_run(make_run(storage_root), label_names=LABELS)
    expected = {s.index: s for s in samples()}
    read = list(run)
    assert keys(read) == KEYS
    for sample in read:
        source = expected[sample["meta"]["index"]]
        image = sample["image"]
        assert image.dtype == torch.float32 and image.shape == (1, 16, 12)
        assert torch.equal(image, torch.from_numpy(source.images["png"]).float()[None] / 255)
        assert sample["images"].keys() == {"png"}
        assert sample["report"] == source.report and sample["label"] == source.label
        assert sample["labels"].tolist() == [source.metadata["labels"][name] for name in LABELS]
        assert sample["meta"]["run_id"] == "test-run" and sample["__url__"].endswith(".tar")


def translation_samples(count):
    for index in range(count):
        rng = np.random.default_rng([3, index])
        yield Sample(index=index,
                     images={"ct.png": rng.integers(0, 65535, (20, 24), dtype=np.uint16),
                             "src.png": rng.integers(0, 255, (20, 24), dtype=np.uint8)},
                     metadata={"kind": "translation", "source": {"kind": "phantom", "recipe": "test"},
                               "source_modality": "mri", "labels": {"age": 40.0 + index}})


def test_decode_sixteen_bit_members(s3_root):
    count = 7
    write_run(translation_samples(count), s3_root, spec(count=count, shard_size=3, run_id="ct-run"), progress=False)
    expected = list(translation_samples(count))
    unit = list(open_run(s3_root, label_names=["age"]))
    raw = list(open_run(s3_root, label_names=["age"], scale="raw"))
    assert len(unit) == len(raw) == count
    for sample, sample_raw, source in zip(unit, raw, expected):
        ct = torch.from_numpy(source.images["ct.png"].astype(np.float32))[None]
        src = torch.from_numpy(source.images["src.png"].astype(np.float32))[None]
        assert sample["images"].keys() == {"ct.png", "src.png"}
        assert torch.equal(sample["image"], ct / 65535)  # the CT is the main image, full 16-bit range kept
        assert torch.equal(sample["images"]["src.png"], src / 255)
        assert torch.equal(sample_raw["image"], ct) and sample_raw["image"].max() > 255
        assert sample["label"] == -1 and sample["report"] is None
        assert sample["labels"].tolist() == [source.metadata["labels"]["age"]]
        assert sample["meta"]["image"]["bit_depth"] == 16


def test_label_filter_include_and_exclude(storage_root):
    url = make_run(storage_root)
    meta = {s.index: s.metadata["labels"] for s in samples()}
    positive = {KEYS[i] for i, labels in meta.items() if labels["Cardiomegaly"] == 1}
    assert 0 < len(positive) < 23
    assert set(keys(open_run(url, labels=["Cardiomegaly"]))) == positive
    either = {KEYS[i] for i, labels in meta.items() if labels["Cardiomegaly"] == 1 or labels["Pleural Effusion"] == 1}
    assert set(keys(open_run(url, labels=["Cardiomegaly", "Pleural Effusion"]))) == either
    assert set(keys(open_run(url, exclude=["Cardiomegaly"]))) == set(KEYS) - positive
    assert keys(open_run(url, labels=["Cardiomegaly"], exclude=["Cardiomegaly"])) == []
    with pytest.raises(BadInputError, match=r"manifest.json: labels: unknown label\(s\) \['Cardiomegally'\]"):
        open_run(url, labels=["Cardiomegally"])
    with pytest.raises(BadInputError, match="exclude: give a list"):
        open_run(url, exclude="Cardiomegaly")


def test_seeded_shuffle_is_deterministic_and_complete(tmp_path):
    url = make_run(str(tmp_path / "run"))
    first = keys(open_run(url, shuffle=8, seed=1))
    assert keys(open_run(url, shuffle=8, seed=1)) == first
    assert sorted(first) == KEYS and first != KEYS
    assert keys(open_run(url, shuffle=8, seed=2)) != first
    run = open_run(url, shuffle=8, seed=1)
    run.set_epoch(1)
    next_epoch = keys(run)
    assert sorted(next_epoch) == KEYS and next_epoch != first
    assert keys(open_run(url)) == KEYS  # no buffer: shards and samples in order


def read_with_workers(run, workers):
    loader = torch.utils.data.DataLoader(run, batch_size=3, num_workers=workers, collate_fn=collate)
    return [key for batch in loader for key in batch["__key__"]]


def test_two_ranks_by_two_workers_read_every_sample_exactly_once(s3_root):
    url = make_run(s3_root, count=23, shard_size=3)  # 8 shards for 4 readers
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            run = open_run(url, shuffle=5, seed=11, rank=rank, world_size=2)
            run.set_epoch(epoch)
            part = read_with_workers(run, workers=2)
            assert 0 < len(part) < 23
            seen += part
        assert sorted(seen) == KEYS  # every key once: none missing, none twice


def test_rank_comes_from_the_environment(monkeypatch):
    assert resolve_topology().world_size == 1
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert (resolve_topology().rank, resolve_topology().world_size) == (1, 3)
    assert resolve_topology(0, 2).rank == 0  # explicit arguments win
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(FactoryError, match="rank 3 of world size 3"):
        resolve_topology()


def test_rank_comes_from_ray_train_inside_a_ray_train_worker(monkeypatch):
    import ray.train

    class Context:
        def get_world_rank(self):
            return 2

        def get_world_size(self):
            return 4

    monkeypatch.setattr(ray.train, "get_context", lambda: Context())
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    found = resolve_topology()
    assert (found.rank, found.world_size, found.source) == (2, 4, "Ray Train context")


def test_resampling_goes_past_one_epoch(s3_root):
    url = make_run(s3_root)
    drawn = keys(itertools.islice(open_run(url, resample=True, seed=5), 3 * 23))
    assert len(drawn) == 69 and set(drawn) <= set(KEYS)
    assert max(Counter(drawn).values()) >= 2
    assert keys(itertools.islice(open_run(url, resample=True, seed=5), 69)) == drawn  # seeded
    assert len(keys(open_run(url, resample=True, seed=5).with_epoch(40))) == 40


def test_mix_share_is_close_to_the_ratio(s3_root, tmp_path):
    synthetic_url = make_run(s3_root, run_id="synthetic-run", shard_size=12)
    real_url = make_run(str(tmp_path / "real"), run_id="real-run", seed=8, shard_size=12)
    n = 2500

    def draw(seed, n):
        mixed = mix(open_run(real_url, resample=True, seed=1), open_run(synthetic_url, resample=True, seed=2),
                    ratio=0.3, seed=seed)
        return [(s["__source__"], s["__key__"]) for s in itertools.islice(mixed, n)]

    drawn = draw(4, n)
    share = sum(source == "synthetic" for source, _ in drawn) / n
    assert abs(share - 0.3) < 3 * (0.3 * 0.7 / n) ** 0.5  # within 3 binomial standard deviations
    assert all(key.startswith("synthetic-run") == (source == "synthetic") for source, key in drawn)
    assert draw(4, 200) == drawn[:200] and draw(5, 200) != drawn[:200]


def test_mix_ends_with_the_shorter_source_or_runs_both_out(tmp_path):
    a, b = make_run(str(tmp_path / "a"), run_id="aa"), make_run(str(tmp_path / "b"), run_id="bb", count=5)
    shortest = list(mix(open_run(a), open_run(b), 0.5, seed=0))
    assert Counter(s["__source__"] for s in shortest)["synthetic"] == 5 and len(shortest) < 28
    longest = list(mix(open_run(a), open_run(b), 0.5, seed=0, longest=True))
    assert len(longest) == 28 and len({s["__key__"] for s in longest}) == 28
    assert {s["__source__"] for s in mix(open_run(a), iter(()), 0.0)} == {"real"}
    with pytest.raises(FactoryError, match="must lie in"):
        mix(open_run(a), open_run(b), 1.5)


def test_real_dataset_mixes_with_a_run_in_one_format(s3_root):
    # synthetic: phantom pairs written as a run; real: other phantoms through the StudyDataset interface
    write_run(phantom_pairs(9, range(10), size=16), s3_root, spec(count=10, shard_size=4, run_id="phantom-run"),
              progress=False)
    real = study_samples(PhantomCxrDataset(count=12, size=16, seed=3), shuffle=True, seed=2)
    first = next(iter(real))
    assert first["image"].shape == (1, 16, 16) and first["labels"].shape == (len(CXR_LABELS),)
    assert first["meta"]["kind"] == "real" and isinstance(first["report"], str)
    assert sorted(s["__key__"] for s in real) == [f"cxr-3-{i:08d}" for i in range(12)]
    mixed = mix(real, open_run(s3_root), ratio=0.5, seed=1, longest=True)
    batches = list(torch.utils.data.DataLoader(mixed, batch_size=5, collate_fn=collate))
    assert sum(len(b["__key__"]) for b in batches) == 12 + 10
    assert {source for b in batches for source in b["__source__"]} == {"real", "synthetic"}
    for batch in batches:
        assert batch["image"].shape[1:] == (1, 16, 16) and batch["labels"].shape[1:] == (len(CXR_LABELS),)
        for labels, label in zip(batch["labels"], batch["label"]):  # one primary-label rule for both sources
            assert labels[label] == 1
    no_finding = list(study_samples(PhantomCxrDataset(count=12, size=16, seed=3), labels=["No Finding"]))
    assert 0 < len(no_finding) < 12 and all(s["meta"]["labels"]["No Finding"] == 1 for s in no_finding)


def test_dataloader_collate_batches(storage_root):
    url = make_run(storage_root)
    loader = torch.utils.data.DataLoader(open_run(url, label_names=LABELS), batch_size=4, collate_fn=collate)
    batches = list(loader)
    assert [len(b["__key__"]) for b in batches] == [4] * 5 + [3]
    batch = batches[0]
    assert batch["image"].shape == (4, 1, 16, 12) and batch["images"]["png"].shape == (4, 1, 16, 12)
    assert batch["labels"].shape == (4, 3) and batch["label"].dtype == torch.long
    assert batch["label"].tolist() == batch["labels"].argmax(1).tolist()
    assert len(batch["report"]) == 4 and isinstance(batch["meta"][0], dict)
    piped = list(open_run(url).batched(10, collation_fn=collate))
    assert [b["image"].shape[0] for b in piped] == [10, 10, 3]


def test_collate_refuses_mixed_image_sizes():
    small = {"__key__": "a", "__url__": "u", "image": torch.zeros(1, 4, 4)}
    with pytest.raises(BadInputError, match=r"sample b: image has shape \(1, 5, 4\)"):
        collate([small, {**small, "__key__": "b", "image": torch.zeros(1, 5, 4)}])


def test_bad_runs_name_the_file(tmp_path):
    with pytest.raises(BadInputError, match="manifest.json: no manifest"):
        open_run(str(tmp_path / "nothing"))
    url = make_run(str(tmp_path / "run"))
    shard = storage.join(url, shard_name(1))
    data = storage.read_bytes(shard)
    storage.atomic_put(shard, data[: len(data) // 2])
    with pytest.raises(IntegrityError, match=r"shard-000001.tar: is \d+ bytes, the manifest says"):
        list(open_run(url))
    # same size, but the tar ends early (zeroed): a stream reader would just stop; this one says so
    storage.atomic_put(shard, data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
    with pytest.raises(IntegrityError, match=r"shard-000001.tar: holds \d samples, the manifest says 5"):
        list(open_run(url))
    storage.remove(shard)
    with pytest.raises(BadInputError, match=r"shard-000001.tar: not found"):
        list(open_run(url))


def test_numpy_arrays_hold_the_same_values_as_tensors(storage_root):
    url = make_run(storage_root)
    tensors = list(open_run(url, label_names=LABELS))
    arrays = list(open_run(url, label_names=LABELS, arrays="numpy"))
    assert keys(arrays) == KEYS
    for tensor_sample, array_sample in zip(tensors, arrays):
        image = array_sample["image"]
        assert isinstance(image, np.ndarray) and image.dtype == np.float32 and image.flags.c_contiguous
        np.testing.assert_array_equal(image, tensor_sample["image"].numpy())
        np.testing.assert_array_equal(array_sample["labels"], tensor_sample["labels"].numpy())
    batch = next(iter(open_run(url, label_names=LABELS, arrays="numpy").batched(4, collation_fn=collate)))
    assert isinstance(batch["image"], np.ndarray) and batch["image"].shape == (4, 1, 16, 12)
    assert batch["label"].dtype == np.int64 and batch["labels"].shape == (4, 3)
    with pytest.raises(ValueError, match="arrays must be one of"):
        open_run(url, arrays="jax")
