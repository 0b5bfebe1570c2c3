"""`medsynth bench duiit`: its small pure helpers (index streams, augmentation, summaries, tables,
age matching) and its registration; the benchmark itself runs for minutes and is not run here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factory.bench import cli
from factory.bench.duiit import (AUGMENT, CONFIGS, PURE, IndexStream, Phantoms, Settings, make_regressor, mean_sd,
                                 nearest_by_age, recalibrate_batch_norm, resample_to_spacing, simple_augment,
                                 summarise, tables, train_regressor)


def test_index_stream_walks_whole_epochs_and_repeats_from_its_seed():
    stream = IndexStream(5, (3, 1, 0))
    first = np.concatenate([stream.take(2) for _ in range(5)])  # 10 indices: two epochs
    assert sorted(first[:5].tolist()) == list(range(5)) and sorted(first[5:].tolist()) == list(range(5))
    again = IndexStream(5, (3, 1, 0)).take(10)
    assert again.tolist() == first.tolist()  # takes of any size give the same sequence
    assert len(IndexStream(3, (0,)).take(7)) == 7
    with pytest.raises(ValueError):
        IndexStream(0, (0,))


def test_simple_augment_keeps_shape_range_and_background_and_is_seeded():
    images = torch.full((6, 1, 32, 32), -1.0)
    images[:, :, 8:24, 8:24] = 0.5
    out = simple_augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, images)
    assert torch.equal(out[:, :, :2, :2], images[:, :, :2, :2])  # the background stays -1
    assert torch.equal(out, simple_augment(images, torch.Generator().manual_seed(0)))
    # Without geometry or intensity changes only the flips remain: a left-right symmetric image is unchanged.
    plain = simple_augment(images, torch.Generator().manual_seed(1), rotate_deg=0, scale=(1, 1), shift_px=0,
                           contrast=0, brightness=0)
    assert torch.allclose(plain, images, atol=1e-5)


def test_regressor_start_depends_on_the_seed_only():
    a, b, c = make_regressor("small", 4), make_regressor("small", 4), make_regressor("small", 5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    assert a(torch.zeros(2, 1, 64, 64)).shape == (2,)
    with pytest.raises(ValueError):
        make_regressor("vgg", 0)


def test_regressor_training_repeats_exactly_and_leaves_the_default_generator_alone():
    # The small regressor has dropout, which draws from torch's default generator.
    rng = torch.Generator().manual_seed(0)
    images = {"ct": torch.rand(12, 1, 32, 32, generator=rng) * 2 - 1}
    ages = {"ct": torch.rand(12, generator=rng)}
    data = Phantoms(images=images, ages=ages, years=ages, study_ids={"ct": [str(i) for i in range(12)]}, spacing={})
    settings = Settings(steps=4, batch=4)
    before = torch.random.get_rng_state()
    first = train_regressor(data, {}, settings, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.rand(5)  # the default generator moves on; the training must not care
    second = train_regressor(data, {}, settings, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(first.state_dict().values(), second.state_dict().values()))


def test_mean_sd_summary_and_tables():
    assert mean_sd([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert mean_sd([5.0]) == (5.0, 0.0)
    per_seed = [{PURE: {"mse": 100.0}, "MIX-CT-MRI-PET": {"mse": 80.0, "joint_mse": 70.0,
                                                           "translated_mse": {"mri": 200.0, "pet": 300.0}}},
                {PURE: {"mse": 120.0}, "MIX-CT-MRI-PET": {"mse": 90.0, "joint_mse": 74.0,
                                                           "translated_mse": {"mri": 220.0, "pet": 300.0}}}]
    summary = summarise(per_seed, CONFIGS)
    assert set(summary) == {PURE, "MIX-CT-MRI-PET"}
    assert summary[PURE]["mse"] == {"mean": 110.0, "sd": pytest.approx(14.14, abs=0.01), "per_seed": [100.0, 120.0]}
    assert summary["MIX-CT-MRI-PET"]["joint_mse"]["mean"] == 72.0
    text = tables(summary)
    assert summary["MIX-CT-MRI-PET"]["translated_mse"]["mri"]["mean"] == 210.0
    text = tables(summary)
    assert "110.0 ± 14.1" in text and "72.0 ± 2.8" in text and AUGMENT in text and "MRI 210 ± 14, PET 300 ± 0" in text


def test_resampling_to_a_coarser_spacing_shrinks_about_the_centre_and_pads_with_background():
    images = torch.full((1, 1, 32, 32), -1.0)
    images[:, :, 8:24, 8:24] = 1.0  # a 16 px square
    same = resample_to_spacing(images, 2.0, 2.0)
    assert same is images
    smaller = resample_to_spacing(images, 2.0, 4.0)  # each output pixel covers twice the mm: half the size
    inside = (smaller > 0).sum().item()
    assert 60 <= inside <= 68  # about 8 x 8 px
    assert torch.equal(smaller[:, :, :4], torch.full_like(smaller[:, :, :4], -1.0))
    larger = resample_to_spacing(images, 4.0, 2.0)  # finer grid: the square doubles (cropped to the grid)
    assert (larger > 0).sum().item() == 32 * 32


def test_batch_norm_recalibration_gives_the_exact_statistics_of_the_images():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    images = torch.randn(16, 1, 4, 4) * 3 + 5
    recalibrate_batch_norm(model, images, 4, "cpu")
    features = model[0](images).detach()
    assert torch.allclose(model[1].running_mean, features.mean((0, 2, 3)), atol=1e-4)
    assert model[1].momentum == 0.1  # restored


def test_nearest_by_age_picks_distinct_slices():
    years = torch.tensor([30.0, 50.0, 51.0, 80.0])
    assert nearest_by_age(years, [49.0, 49.0, 85.0]) == [1, 2, 3]


def test_registered_as_a_benchmark():
    assert cli.BENCHMARKS["duiit"][0] == "factory.bench.duiit"
