"""Justify's networks and inference, in process: the config (the paper's sizes), captions, shapes,
the diagnosis as the decoder's first output, bundle init, and M on a tiny model trained here through
the recipe's stages: its result decodes to another diagnosis, deterministically, image by image."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from justify_helpers import TINY, phantom_data, run_steps, setup, to_uint8

from factory.cli import main
from factory.data.text.vocab import Vocabulary
from factory.models import registry
from factory.errors import BadInputError
from factory.models.bundle import load_bundle, write_bundle
from factory.models.justify import arae
from factory.models.justify import model as justify
from factory.models.justify.config import DEFAULT_CONFIG, make_config, stage_at
from factory.produce.explain import explain_images
from factory.train.recipes.justify import primary_labels

PAPER_DIAGNOSES = ("No Finding", "Cardiomegaly")  # the paper's normal / cardiomegaly


def test_defaults_are_the_papers_sizes_and_settings():
    config = make_config()
    assert (config["code_dim"], config["noise_dim"], config["arae_hidden"]) == (300, 100, 300)
    assert (config["stage1_size"], config["image_size"]) == (64, 128)
    assert make_config({"image_size": 256})["image_size"] == 256
    assert (config["m_lr"], config["m_steps"], config["m_max_iter"]) == (1.0, 100, 20)
    assert config["betas"] == [0.5, 0.999] and config["caption_words"] == 15 and config["captions_per_study"] == 4
    assert config["conditioning_augmentation"] is False  # §3.2 removes StackGAN's CA
    # appendix A: G1 starts at 1536 x 4x4 from r (400); D1 concatenates r to 768 channels at 4x4 (1168)
    assert 16 * config["g1_width"] == 1536 and 8 * config["d1_width"] + config["code_dim"] + config["noise_dim"] == 1168


@pytest.mark.parametrize("bad, message", [
    ({"stage1_size": 128}, "stage1_size .* must be smaller than image_size"),
    ({"image_size": 48}, "image_size must be a power of two"),
    ({"schedule": {"arae": 1, "stage1": 1, "inverse": 1}}, "schedule must give the steps of each stage"),
    ({"schedule": {"arae": -1, "stage1": 1, "stage2": 1, "inverse": 1}}, "schedule steps must be integers"),
    ({"num_labels": 1}, "num_labels must be at least 2"),
    ({"m_lr": 0}, "m_lr must be a positive number"),
    ({"lr": {"AE": 1.0}}, "lr must give a learning rate for each of"),
    ({"typo": 1}, "unknown justify config keys"),
    ({"alternatives": [3]}, "alternatives must be null or at least 2 distinct diagnoses in 0..8"),
    ({"alternatives": [0, 9]}, "alternatives must be null or at least 2 distinct diagnoses"),
])
def test_bad_config_values_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        registry.make_config("justify", bad)


def test_the_nearest_alternative_is_the_most_likely_other_diagnosis_among_those_allowed():
    probabilities = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.6, 0.1]])
    assert justify.nearest_alternative(probabilities).tolist() == [1, 1]
    # diagnosis 1 never trained: the next most likely trained one; an image read as an untrained
    # diagnosis still gets a trained alternative
    assert justify.nearest_alternative(probabilities, [0, 2, 3]).tolist() == [2, 0]
    assert justify.nearest_alternative(probabilities, [1, 3]).tolist() == [1, 1]


def test_the_recipe_lets_m_choose_only_diagnoses_the_training_data_has():
    paper = setup(phantom_data(24, labels=PAPER_DIAGNOSES))[0].config
    assert paper["alternatives"] == [0, 1]
    part = phantom_data(24).parts["studies"]
    present = sorted(set(primary_labels(part.labels, part.label_names).tolist()))
    assert 2 <= len(present) < len(part.label_names)  # some diagnoses never occur in 24 phantoms
    assert setup(phantom_data(24))[0].config["alternatives"] == present
    assert setup(phantom_data(24), alternatives=None)[0].config["alternatives"] is None  # the user may say


def test_stages_follow_the_schedule_in_order():
    schedule = {"arae": 2, "stage1": 0, "stage2": 1, "inverse": 3}
    assert [stage_at(schedule, s) for s in range(6)] == [("arae", 0), ("arae", 1), ("stage2", 0), ("inverse", 0),
                                                        ("inverse", 1), ("inverse", 2)]
    with pytest.raises(ValueError, match="step 6 lies past the schedule's 6 steps"):
        stage_at(schedule, 6)


def test_captions_are_the_papers_descriptions():
    report = ("FINDINGS: The heart is mildly enlarged. There is no pleural effusion or pneumothorax seen here. "
              "Lungs are clear. Ok. IMPRESSION: Mild cardiomegaly.")
    config = make_config()
    captions = arae.captions_of(report, config)
    assert captions == [["the", "heart", "is", "mildly", "enlarged", "."],
                        ["there", "is", "no", "pleural", "effusion", "or", "pneumothorax", "seen", "here", ".",
                         "lungs", "are", "clear", "."],
                        ["ok", ".", "mild", "cardiomegaly", "."]]
    vocabulary = Vocabulary(list(dict.fromkeys(w for c in captions for w in c)))
    ids, counts = arae.encode_descriptions([report, ""], [1, 0], vocabulary, config)
    assert ids.shape == (2, 4, 17) and counts.tolist() == [3, 1]
    assert ids[0, 0, 0] == len(vocabulary) + 1 and vocabulary.decode(ids[0, 0, 1:]) == "the heart is mildly enlarged."
    assert ids[1, 0, :2].tolist() == [len(vocabulary), Vocabulary.eos_id]  # no report: the diagnosis alone


@pytest.mark.parametrize("ca", [False, True])
def test_network_shapes(ca):
    config = make_config(TINY, image_size=32, stage1_size=16, vocab_size=20, conditioning_augmentation=ca)
    nets = justify.build_networks(config)
    r = torch.randn(3, 24)
    low, kl = nets["G1"](r, torch.randn(3, 8) if ca else None)
    high, _ = nets["G2"](low, r)
    assert low.shape == (3, 1, 16, 16) and high.shape == (3, 1, 32, 32) and (float(kl.detach()) > 0) == ca
    assert nets["D1"](low, r).shape == nets["D2"](high, r).shape == (3,)
    assert nets["I"](low).shape == (3, 24)
    tokens = torch.tensor([[20, 5, 6, 2, 0], [21, 2, 0, 0, 0]])
    code, dx, words = nets["AE"](tokens)
    assert torch.allclose(code.norm(dim=1), torch.ones(2)) and dx.shape == (2, 9) and words.shape == (2, 4, 20)
    # the decoder's first output is the diagnosis
    assert torch.allclose(dx, nets["AE"].diagnosis_logits(code), atol=1e-6)
    assert nets["Cz"](code).shape == (2,) and nets["Gz"](torch.randn(2, 8)).shape == (2, 16)
    ids = nets["AE"].decode(code, torch.tensor([0, 1]), 6)
    assert ids.shape == (2, 7)
    for row in ids.tolist():  # nothing but <pad> after the first <eos>
        if Vocabulary.eos_id in row:
            assert set(row[row.index(Vocabulary.eos_id) + 1:]) <= {Vocabulary.pad_id}


def test_bundle_init_writes_a_bundle_that_loads_back(tmp_path):
    assert main(["bundle", "init", "justify", "--out", str(tmp_path / "b"), "--size", "32", "--width", "2"]) == 0
    bundle = load_bundle(str(tmp_path / "b"))
    assert bundle.recipe == "justify" and set(bundle.nets) == {"AE", "Gz", "Cz", "G1", "D1", "G2", "D2", "I"}
    assert bundle.model_config["stage1_size"] == 16 and bundle.model_config["vocab_size"] == len(bundle.vocabulary)
    images = np.zeros((2, 48, 48), np.uint8)  # any size: resized to stage 1's for I
    probs = justify.diagnose(bundle.nets, images)
    assert probs.shape == (2, 9) and np.allclose(probs.sum(axis=1), 1)
    diagnosis, ids = justify.justify_caption(bundle.nets, images)
    assert diagnosis.shape == (2,) and len(justify.decode_captions(ids, bundle.vocabulary)) == 2


@pytest.fixture(scope="module")
def trained():
    """A tiny model over the paper's two diagnoses, trained here through every stage (mostly the
    ARAE, whose decoder must read the diagnosis from the code for M to have anything to search)."""
    data = phantom_data(24, labels=PAPER_DIAGNOSES)
    recipe, nets, engines = setup(data, lr={**DEFAULT_CONFIG["lr"], "AE": 1e-2, "I": 1e-2}, caption_words=8,
                                  min_caption_words=3, critic_steps=1,
                                  schedule={"arae": 60, "stage1": 1, "stage2": 1, "inverse": 2})
    run_steps(recipe, engines, data, range(64), batch_size=12)
    return recipe.config, nets, data


def test_the_trained_decoder_reads_the_diagnosis_from_the_code(trained):
    config, nets, data = trained
    part = data.parts["studies"]
    truth = primary_labels(part.labels, part.label_names)
    vocabulary = Vocabulary.from_json(data.info["vocabulary"])
    descriptions, _ = arae.encode_descriptions(part.reports, truth.tolist(), vocabulary, config)
    nets["AE"].eval()
    with torch.no_grad():
        decoded = nets["AE"].diagnosis_logits(nets["AE"].encode(torch.from_numpy(descriptions[:, 0]))).argmax(dim=1)
    assert torch.equal(decoded, truth) and 0 < int(truth.sum()) < len(truth)  # both diagnoses present


def test_m_finds_a_representation_of_the_other_diagnosis(trained):
    config, nets, data = trained
    settings = {**config, "m_steps": 20}
    images = to_uint8(data.parts["studies"].images[:2])
    result = justify.counterfactual(nets, images, config=settings)
    assert result.success.all() and (result.target != result.diagnosis).all()
    assert result.target.tolist() == (1 - result.diagnosis).tolist()  # the nearest (only) alternative
    with torch.no_grad():
        decoded = nets["AE"].diagnosis_logits(torch.from_numpy(result.representation[:, :16])).argmax(dim=1)
    assert decoded.tolist() == result.target.tolist() and result.images.shape == (2, 32, 32)
    assert result.images.dtype == np.uint8
    again = justify.counterfactual(nets, images, config=settings)
    assert np.array_equal(again.representation, result.representation) and np.array_equal(again.images, result.images)
    # Image by image: alone, the second image reaches the same r' (up to the float error that the
    # batched convolutions of I add and L-BFGS carries along).
    alone = justify.counterfactual(nets, images[1:], config=settings)
    assert alone.target[0] == result.target[1] and alone.success[0]
    assert np.allclose(alone.representation[0], result.representation[1], atol=2e-3)
    with pytest.raises(ValueError, match="target must hold one diagnosis in 0..1 per image"):
        justify.counterfactual(nets, images, np.array([0, 2]), config=settings)


def test_explain_images_gives_each_image_its_diagnosis_caption_and_counterfactual(trained, tmp_path):
    config, nets, data = trained
    write_bundle(str(tmp_path / "b"), "justify", nets, {**config, "m_steps": 20}, list(PAPER_DIAGNOSES),
                 data.info["vocabulary"], training_data={"fingerprint": "test"}, metrics={}, trained=True)
    bundle = load_bundle(str(tmp_path / "b"))
    images = to_uint8(data.parts["studies"].images[:2])
    found = explain_images(bundle, images, batch_size=1)
    direct = justify.counterfactual(bundle.nets, images, config=bundle.model_config)
    for i, item in enumerate(found):
        assert item.diagnosis == PAPER_DIAGNOSES[direct.diagnosis[i]] and item.reached
        assert item.alternative == PAPER_DIAGNOSES[direct.target[i]] != item.diagnosis
        assert set(item.probabilities) == set(PAPER_DIAGNOSES) and math.isclose(sum(item.probabilities.values()), 1,
                                                                                rel_tol=1e-5)
        assert isinstance(item.caption, str) and item.counterfactual.shape == (32, 32)
        assert json.loads(json.dumps(item.to_json()))["alternative_reached"] is True
    with pytest.raises(BadInputError, match="need square 8-bit grayscale images"):
        explain_images(bundle, images.astype(np.float32))


def test_a_bundle_that_makes_no_explanations_is_refused(tmp_path):
    assert main(["bundle", "init", "xraygan-cgan", "--out", str(tmp_path / "c"), "--size", "16", "--width", "2"]) == 0
    with pytest.raises(BadInputError, match="a xraygan-cgan bundle makes images, not explanations"):
        explain_images(load_bundle(str(tmp_path / "c")), np.zeros((1, 16, 16), np.uint8))


def test_the_autoencoders_lstms_compute_the_same_in_both_modes():
    """They stay in training mode (cuDNN's RNN backward needs it) and have no dropout to differ by."""
    ae = justify.build_networks(make_config(TINY, image_size=32, stage1_size=16, vocab_size=20))["AE"].eval()
    assert not ae.training and ae.decoder.training and ae.encoder.training and ae.decoder.dropout == 0


def test_captions_become_images_sample_by_sample(trained):
    config, nets, data = trained
    part = data.parts["studies"]
    vocabulary = Vocabulary.from_json(data.info["vocabulary"])
    descriptions, _ = arae.encode_descriptions(part.reports[:3], [0, 1, 0], vocabulary, config)
    tokens = torch.from_numpy(descriptions[:, 0])
    noise = torch.randn(3, config["noise_dim"], generator=torch.Generator().manual_seed(0))
    images = justify.generate_from_captions(nets, tokens, noise, config)
    assert images.shape == (3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(justify.generate_from_captions(nets, tokens[1:2], noise[1:2], config)[0], images[1])


def test_a_model_whose_schedule_never_trains_stage_2_draws_with_stage_1_upsampled(trained):
    config, nets, _ = trained
    r = torch.randn(2, config["code_dim"] + config["noise_dim"], generator=torch.Generator().manual_seed(1))
    no_stage2 = {**config, "schedule": {**config["schedule"], "stage2": 0}}
    for net in nets.values():
        net.eval()
    with torch.no_grad():
        low, _ = nets["G1"](r)
        with_g2, without = justify.draw(nets, r, config), justify.draw(nets, r, no_stage2)
        assert torch.equal(with_g2, nets["G2"](low, r)[0]) and without.shape == with_g2.shape == (2, 1, 32, 32)
        upsampled = torch.nn.functional.interpolate(low, size=32, mode="bilinear", align_corners=False)
        assert torch.equal(without, upsampled) and not torch.equal(without, with_g2)  # G1's film, not G2's
