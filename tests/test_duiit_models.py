"""DUIIT networks: shapes, the PatchGAN's 70x70 receptive field, config validation, conversions, bundle init."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from factory.cli import main
from factory.models import duiit
from factory.models.bundle import load_bundle
from factory.models.registry import build_networks, make_config

TINY = {"image_size": 32, "g_width": 4, "g_blocks": 1, "d_width": 4}


def test_networks_by_source_and_output_shapes():
    torch.set_num_threads(1)
    nets = build_networks("duiit", {**TINY, "sources": ["pet"]}, seed=0)
    assert list(nets) == ["T_pet", "D_pet", "P"]
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    out = nets["T_pet"](images, images)
    assert set(out) == {"fake_ct", "cycled_source", "fake_source", "cycled_ct"}
    assert all(v.shape == images.shape for v in out.values())
    assert all(v.abs().max() <= 1 for v in out.values())  # tanh
    logits_ct, logits_source = nets["D_pet"](images, images)
    assert logits_ct.shape == logits_source.shape == (3, 1, 2, 2)  # 32 px: a 2x2 grid of patches
    assert nets["P"](images).shape == (3,)
    assert list(build_networks("duiit", {**TINY, "sources": ["pet", "mri"]}, seed=0)) == [
        "T_mri", "T_pet", "D_mri", "D_pet", "P"]  # canonical order, whatever order the config lists


def test_generator_follows_cyclegan_layout():
    generator = duiit.ResnetGenerator(width=64, blocks=9)
    convs = [m for m in generator.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    # c7s1-64, d128, d256, 9 x R256 (two convs each), u128, u64, c7s1-1
    shapes = [(type(m).__name__, m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in convs]
    assert shapes[:3] == [("Conv2d", 1, 64, 7, 1), ("Conv2d", 64, 128, 3, 2), ("Conv2d", 128, 256, 3, 2)]
    assert shapes[3:21] == [("Conv2d", 256, 256, 3, 1)] * 18
    assert shapes[21:] == [("ConvTranspose2d", 256, 128, 3, 2), ("ConvTranspose2d", 128, 64, 3, 2),
                           ("Conv2d", 64, 1, 7, 1)]
    assert isinstance(generator.net[-1], nn.Tanh)
    assert make_config("duiit", {"image_size": 128})["g_blocks"] == 6
    assert make_config("duiit", {"image_size": 256})["g_blocks"] == 9


def test_patchgan_is_c64_c128_c256_c512_with_a_70_pixel_receptive_field():
    discriminator = duiit.PatchDiscriminator(width=64, layers=3)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    norms = [m for m in discriminator.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3  # none on C64
    assert duiit.receptive_field(discriminator) == 70

    # Measured: the input pixels one output logit depends on. Instance norm mixes every pixel of an
    # image through its statistics, so measure on a copy without it (the convolutions set the field).
    plain = copy.deepcopy(discriminator)
    for i, module in enumerate(plain.net):
        if isinstance(module, nn.InstanceNorm2d):
            plain.net[i] = nn.Identity()
    images = torch.randn(1, 1, 128, 128, requires_grad=True)
    logits = plain(images)
    row, col = logits.shape[2] // 2, logits.shape[3] // 2
    logits[0, 0, row, col].backward()
    touched = images.grad[0, 0].abs() > 0
    rows, cols = touched.any(1).nonzero()[:, 0], touched.any(0).nonzero()[:, 0]
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (70, 70)


@pytest.mark.parametrize("overrides, message", [
    ({"sources": []}, "sources must be a non-empty list"),
    ({"sources": "mri"}, "sources must be a non-empty list"),
    ({"sources": ["ct"]}, "must not include 'ct'"),
    ({"sources": ["mri", "xray"]}, "sources must be distinct modalities"),
    ({"sources": ["mri", "mri"]}, "sources must be distinct modalities"),
    ({"image_size": 30}, "multiple of 4"),
    ({"image_size": 20}, "too small for a PatchGAN"),
    ({"g_width": 0}, "g_width must be an integer >= 1"),
    ({"g_blocks": -1}, "g_blocks must be an integer >= 0"),
    ({"predictor": "vgg16"}, "predictor must be one of"),
    ({"lr": {"T": 2e-4, "D": 2e-4}}, "lr must give a value for each of"),
    ({"lr": {"T": 2e-4, "D": 2e-4, "P": 0}}, "lr.P must be a positive number"),
    ({"betas": {"T": [0.5, 1.5], "D": [0.5, 0.9], "P": [0.9, 0.99]}}, "betas.T must be two numbers"),
    ({"ct_window": [120, -20]}, "ct_window must be \\[low, high\\]"),
    ({"age_scale": 0}, "age_scale must be > 0"),
    ({"lr_decay_start": 1.5}, "lr_decay_start must be <= 1"),
    ({"pool_size": -1}, "pool_size must be an integer >= 0"),
    ({"generator_width": 8}, "unknown DUIIT config keys: \\['generator_width'\\]"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        duiit.make_config(overrides)


def test_paper_hyper_parameters_are_the_defaults():
    config = duiit.make_config()
    assert config["lambda_cyc"] == 10.0 and config["lambda_pred"] == 0.001 and config["pool_size"] == 50
    assert config["lr"] == {"T": 2e-4, "D": 2e-4, "P": 1e-3}
    assert config["betas"]["T"] == config["betas"]["D"] == [0.5, 0.999]
    assert config["sources"] == ["mri", "pet"] and config["predictor"] == "resnet18"


def test_intensity_and_age_conversions_round_trip():
    config = duiit.make_config()
    hu = torch.tensor([-1000.0, -20.0, 50.0, 120.0, 1300.0])
    unit = duiit.to_model_space(hu, "ct", config)
    assert unit.tolist() == pytest.approx([-1, -1, 0, 1, 1])
    assert duiit.ct_to_hounsfield(unit, config).tolist() == pytest.approx([-20, -20, 50, 120, 120])
    assert duiit.to_model_space(torch.tensor([0.0, 0.5, 2.0]), "mri", config).tolist() == pytest.approx([-1, 0, 1])
    years = torch.tensor([20.0, 55.0, 90.0])
    assert duiit.normalise_age(years, config).tolist() == pytest.approx([-1.75, 0, 1.75])
    assert duiit.age_in_years(duiit.normalise_age(years, config), config).tolist() == pytest.approx(years.tolist())


def test_translate_checks_its_source_and_is_batch_independent():
    nets = build_networks("duiit", {**TINY, "sources": ["mri"]}, seed=0)
    images = torch.rand(4, 1, 32, 32) * 2 - 1
    both = duiit.translate(nets, images, "mri")
    assert both.shape == images.shape
    assert torch.allclose(duiit.translate(nets, images[:1], "mri"), both[:1], atol=1e-6)
    with pytest.raises(ValueError, match=r"translates \['mri'\] into CT, not 'pet'"):
        duiit.translate(nets, images, "pet")
    with pytest.raises(ValueError, match="multiples of 4"):
        duiit.translate(nets, images[..., :30], "mri")


def test_bundle_init_writes_an_untrained_duiit_bundle(tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["bundle", "init", "duiit", "--out", str(out), "--size", "32", "--width", "4", "--sources", "pet"]) == 0
    assert capsys.readouterr().out.startswith("duiit-")
    bundle = load_bundle(str(out))
    assert not bundle.metadata["trained"] and bundle.vocabulary is None and bundle.label_names == ["age"]
    assert list(bundle.nets) == ["T_pet", "D_pet", "P"]
    config = bundle.model_config
    assert config["sources"] == ["pet"] and config["image_size"] == 32 and config["g_width"] == 4
    assert (config["age_centre"], config["age_scale"]) == (55.0, 20.0)

    assert main(["bundle", "init", "duiit", "--out", str(tmp_path / "x"), "--sources", "ct"]) == 2
    assert "must not include 'ct'" in capsys.readouterr().err
