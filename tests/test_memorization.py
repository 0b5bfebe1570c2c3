"""The memorization audit on phantom chest X-rays: exact and near copies of training images planted
among ordinary synthetic images are flagged; ordinary ones only about as often as fresh real images."""

import numpy as np
import pytest
import torch

from factory.data.phantoms.cxr import generate_study
from factory.errors import BadInputError
from factory.evaluate.memorization import audit_memorization, nearest_neighbours, pooled_pixels

SIZE = 128  # the phantom's default film size
TRAIN, HELD_OUT, ORDINARY = range(0, 300), range(300, 500), range(500, 700)  # disjoint phantom patients
KINDS = ("exact", "noise", "shift", "brightness")
PER_KIND = 10


def phantoms(indices):
    return np.stack([generate_study(0, i, size=SIZE).image for i in indices]).astype(np.float32) / 255


def near_copy(image, kind, rng):
    if kind == "noise":  # film-grain-like noise, sigma 5/255
        return np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32)
    if kind == "shift":  # one pixel to the right, the edge column repeated
        return np.concatenate([image[:, :1], image[:, :-1]], axis=1)
    if kind == "brightness":  # +5/255
        return np.clip(image + 0.02, 0, 1)
    return image.copy()


@pytest.fixture(scope="module")
def planted():
    """Ordinary synthetic images (unseen phantom patients) with 40 planted copies at seeded positions."""
    rng = np.random.default_rng(2024)
    train = phantoms(TRAIN)
    sources = rng.choice(len(train), len(KINDS) * PER_KIND, replace=False)
    copies = [near_copy(train[j], KINDS[k // PER_KIND], rng) for k, j in enumerate(sources)]
    ordinary = phantoms(ORDINARY)
    total = len(ordinary) + len(copies)
    positions = rng.permutation(total)[: len(copies)]  # where each copy lands among the synthetic set
    synthetic = np.empty((total, SIZE, SIZE), np.float32)
    is_copy = np.zeros(total, bool)
    is_copy[positions] = True
    synthetic[positions] = np.stack(copies)
    synthetic[~is_copy] = ordinary
    return {"train": train, "held_out": phantoms(HELD_OUT), "synthetic": synthetic, "positions": positions,
            "sources": sources, "is_copy": is_copy, "keys": [f"syn-{i:04d}" for i in range(total)]}


def test_audit_flags_planted_copies_and_few_ordinary_samples(planted):
    audit = audit_memorization(torch.from_numpy(planted["train"]), planted["synthetic"], planted["held_out"],
                               features=pooled_pixels(16), synthetic_keys=planted["keys"],
                               train_keys=[f"train-{i:04d}" for i in TRAIN])
    positions, is_copy = planted["positions"], planted["is_copy"]
    ordinary = int((~is_copy).sum())
    figures = {}
    for space, result in audit.spaces.items():
        flagged = {item["index"] for item in result.flagged}
        caught = {kind: sum(int(p) in flagged for p in positions[k * PER_KIND:(k + 1) * PER_KIND])
                  for k, kind in enumerate(KINDS)}
        false_positives = len(flagged - set(positions.tolist())) / ordinary
        figures[space] = (caught, false_positives, result.threshold)
        assert caught == {kind: PER_KIND for kind in KINDS}, (space, caught)
        assert false_positives <= 0.05, (space, false_positives)  # fresh real images: about 1 %
        assert result.threshold == pytest.approx(np.percentile(result.real_distances, 1))
        assert result.share == pytest.approx(len(flagged) / len(planted["synthetic"]))
        # each copy's nearest training image is the one it was copied from, named by its key
        by_index = {item["index"]: item for item in result.flagged}
        for position, source in zip(positions.tolist(), planted["sources"].tolist()):
            assert by_index[position]["nearest_train_index"] == source
            assert by_index[position]["nearest_train_key"] == f"train-{source:04d}"
            assert by_index[position]["key"] == f"syn-{position:04d}"
        assert [item["distance"] for item in result.flagged] == sorted(item["distance"] for item in result.flagged)
        exact = positions[:PER_KIND].tolist()
        assert max(result.synthetic_distances[i] for i in exact) == 0.0  # taken directly, not by cdist's expansion
        assert sum(result.histogram["synthetic"]) == len(planted["synthetic"])
        assert sum(result.histogram["real"]) == len(planted["held_out"]) == len(result.real_distances)
        assert len(result.histogram["edges"]) == len(result.histogram["synthetic"]) + 1
    assert set(positions.tolist()) <= set(audit.flagged_any)
    assert audit.counts == {"train": 300, "synthetic": 240, "held_out": 200}
    assert "flagged in any space" in audit.summary()
    print(figures)


def test_a_network_as_feature_space_catches_exact_and_noisy_copies(planted):
    torch.manual_seed(0)  # a fixed, untrained small CNN: any (N, D) callable plugs in, as the judge will
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 5, stride=2), torch.nn.ReLU(),
                                  torch.nn.Conv2d(16, 32, 5, stride=2), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten()).eval()
    batches = (torch.from_numpy(b)[:, None] for b in np.array_split(planted["synthetic"], 7))  # (B, 1, H, W) batches
    audit = audit_memorization(planted["train"], batches, planted["held_out"], features=network, batch_size=64)
    flagged = {item["index"] for item in audit.spaces["features"].flagged}
    assert set(planted["positions"][: 2 * PER_KIND].tolist()) <= flagged  # exact and noisy copies
    assert len(flagged - set(planted["positions"].tolist())) <= 0.05 * (~planted["is_copy"]).sum()


def test_blocked_nearest_neighbours_match_a_full_distance_matrix():
    generator = torch.Generator().manual_seed(1)
    queries, reference = torch.rand(37, 20, generator=generator), torch.rand(53, 20, generator=generator)
    full = torch.cdist(queries.double(), reference.double())
    for block_elements in (1, 7, 100, 1 << 24):  # one distance at a time ... all at once
        found = nearest_neighbours(queries, reference, block_elements=block_elements)
        assert torch.equal(found.indices, full.argmin(1))
        assert torch.allclose(found.distances.double(), full.min(1).values, atol=1e-5)


def test_uint8_and_single_images_are_accepted():
    rng = np.random.default_rng(3)
    train = rng.integers(0, 255, (30, 16, 16), dtype=np.uint8)
    held = rng.integers(0, 255, (20, 16, 16), dtype=np.uint8)
    synthetic = [torch.from_numpy(train[4]).clone(), torch.from_numpy(rng.integers(0, 255, (16, 16), dtype=np.uint8))]
    audit = audit_memorization(train, synthetic, held)
    assert [item["index"] for item in audit.spaces["pixels"].flagged] == [0]
    assert audit.spaces["pixels"].flagged[0]["nearest_train_index"] == 4
    assert audit.spaces.keys() == {"pixels"}


def test_bad_inputs_are_named():
    images = torch.rand(10, 1, 8, 8)
    with pytest.raises(BadInputError, match="synthetic images: have 256 pixels per image, the training images 64"):
        audit_memorization(images, torch.rand(4, 1, 16, 16), images)
    with pytest.raises(BadInputError, match=r"features\(\) must return \(N, D\)"):
        audit_memorization(images, images, images, features=lambda x: x)
    with pytest.raises(BadInputError, match="held-out images: no images"):
        audit_memorization(images, images, [])
    with pytest.raises(BadInputError, match="synthetic_keys: 3 keys for 10 images"):
        audit_memorization(images, images, images, synthetic_keys=["a", "b", "c"])
    with pytest.raises(BadInputError, match="dtype torch.int64"):
        audit_memorization(torch.ones(3, 8, 8, dtype=torch.long), images, images)
