"""EMIXER networks: shapes, spectral norm, conditioning, rotation, report masking, generate()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from factory.data.text.vocab import Vocabulary
from factory.models import emixer
from factory.models.blocks import ConditionalBatchNorm2d, has_spectral_norm
from factory.models.emixer import build_networks, decode_reports, generate, make_config, z_dim
from factory.models.registry import build_networks as build_by_name
from factory.train.recipes.emixer import report_nll, rotate

TINY = dict(image_size=32, g_width=4, d_width=4, f_width=4, class_embedding=8, vocab_size=20, max_sentences=3,
            max_words=5, image_feature=8, word_embedding=8, hidden=8, word_layers=2, d_text_hidden=8)
B = 3


@pytest.fixture(scope="module")
def nets():
    torch.set_num_threads(1)
    return build_by_name("emixer", make_config(TINY), seed=0)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, z_dim(make_config(TINY)), generator=g)
    labels = (torch.rand(B, 9, generator=g) < 0.5).float()
    return z, labels


def test_shapes_of_every_network(nets):
    z, labels = _inputs()
    assert z.shape[1] == 80  # 20 x (3 up-blocks + stem) at 32x32
    images = nets["G"](z, labels)
    assert images.shape == (B, 1, 32, 32) and images.abs().max() <= 1
    logits, rotation = nets["D_image"](images, labels, torch.tensor([True, False, True]))
    assert logits.shape == (B,) and rotation.shape == (B, 4)
    reports = torch.randint(0, 20, (B, 3, 5))
    stop, words, label_logits = nets["F"](images, reports)
    assert stop.shape == (B, 3) and words.shape == (B, 3, 5, 20) and label_logits.shape == labels.shape
    onehot = nets["F"](images, mode="gumbel", generator=torch.Generator().manual_seed(1))
    assert onehot.shape == (B, 3, 5, 20) and onehot.requires_grad
    assert torch.equal(onehot.detach().sum(-1), torch.ones(B, 3, 5))
    assert nets["F"](images, mode="greedy").shape == (B, 3, 5)
    for report in (reports, onehot):
        assert nets["D_report"](report).shape == (B,)
        assert nets["D_joint"](images, report).shape == (B,)


def test_image_size_sets_up_blocks_and_z():
    assert z_dim(make_config(image_size=128)) == 120  # the paper's 128x128, z = 120
    assert z_dim(make_config(image_size=64)) == 100
    config = make_config(TINY, image_size=64)
    nets = build_networks(config)
    assert nets["G"](torch.zeros(2, 100), torch.zeros(2, 9)).shape == (2, 1, 64, 64)
    assert nets["D_image"](torch.zeros(2, 1, 64, 64))[0].shape == (2,)


def test_resnet_report_encoder_reads_labels_and_writes_reports():
    torch.manual_seed(0)
    f = build_networks(make_config(TINY, f_encoder="resnet10"))["F"]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in f.encoder.modules()) > 0
    images = torch.rand(B, 1, 32, 32) * 2 - 1
    reports = torch.randint(0, 20, (B, 3, 5))
    stop, words, labels = f(images, reports)
    assert stop.shape == (B, 3) and words.shape == (B, 3, 5, 20) and labels.shape == (B, 9)
    tokens, read = f(images, mode="greedy", with_labels=True)
    assert tokens.shape == (B, 3, 5) and torch.equal(read, f(images, mode="labels"))
    # Its parameters get gradients from the label head like the BigGAN trunk's do.
    torch.nn.functional.binary_cross_entropy_with_logits(f(images, mode="labels"), torch.ones(B, 9)).backward()
    assert f.encoder.net.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [{"image_size": 48}, {"image_size": 8}, {"nonsense": 1}, {"label_fraction": 1.5},
                                 {"lr": {"G": 1e-4}}, {"g_width": 0}, {"f_encoder": "densenet"}])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        make_config(TINY, **bad)


def test_spectral_norm_on_discriminators_and_generator(nets):
    for name in ("G", "D_image", "D_joint"):
        layers = [m for m in nets[name].modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert layers and all(has_spectral_norm(m) for m in layers), name
    heads = [m for m in nets["D_report"].head if isinstance(m, nn.Linear)]
    assert heads and all(has_spectral_norm(m) for m in heads)
    assert not has_spectral_norm(nets["F"].word_out)


def test_conditional_batch_norm_conditions():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(4, 3)
    x = torch.randn(5, 4, 6, 6)
    a, b = cbn(x, torch.zeros(5, 3)), cbn(x, torch.ones(5, 3))
    assert not torch.allclose(a, b)
    # A zero condition is plain batch norm.
    assert torch.allclose(a, nn.functional.batch_norm(x, None, None, training=True, eps=1e-4), atol=1e-5)


def test_generator_output_depends_on_labels(nets):
    z, labels = _inputs()
    nets["G"].eval()
    with torch.no_grad():
        a = nets["G"](z, labels)
        b = nets["G"](z, 1 - labels)
    nets["G"].train()
    assert (a - b).abs().max() > 1e-4


def test_rotation_head_and_rotate(nets):
    images = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    k = torch.tensor([1, 3])
    out = rotate(images, k)
    assert torch.equal(out[0], torch.rot90(images[0], 1, (1, 2)))
    assert torch.equal(out[1], torch.rot90(images[1], 3, (1, 2)))
    x = torch.randn(B, 1, 32, 32)
    _, rotation = nets["D_image"](x)
    _, rotated = nets["D_image"](torch.rot90(x, 1, (2, 3)))
    assert rotation.shape == (B, 4) and not torch.allclose(rotation, rotated)


def test_sampled_reports_pad_after_eos_and_after_stop(nets):
    F = nets["F"]
    images = torch.randn(B, 1, 32, 32)
    saved = F.stop.bias.detach().clone(), F.word_out.bias.detach().clone()
    try:
        with torch.no_grad():
            F.stop.bias.fill_(-50.0)  # every sentence continues
            F.word_out.bias.zero_()
            F.word_out.bias[Vocabulary.eos_id] = 50.0  # every sentence ends at once
            ids = F(images, mode="greedy")
            assert (ids[:, :, 0] == Vocabulary.eos_id).all() and (ids[:, :, 1:] == Vocabulary.pad_id).all()
            onehot = F(images, mode="gumbel", generator=torch.Generator().manual_seed(0))
            assert torch.equal(onehot.argmax(-1), ids)
            F.stop.bias.fill_(50.0)  # STOP before the first sentence
            assert (F(images, mode="greedy") == Vocabulary.pad_id).all()
    finally:
        with torch.no_grad():
            F.stop.bias.copy_(saved[0])
            F.word_out.bias.copy_(saved[1])


def _first_eos_mask(ids: torch.Tensor) -> torch.Tensor:
    """True at every word up to and including a sentence's first <eos> (all words if it has none)."""
    eos = (ids == Vocabulary.eos_id).long()
    return torch.cumsum(eos, dim=-1) - eos == 0


def test_writing_reads_back_each_sentence_as_teacher_forcing_does():
    torch.manual_seed(2)
    F = build_networks(make_config(TINY))["F"].eval()
    images = torch.randn(B, 1, 32, 32)
    with torch.no_grad():
        F.stop.bias.fill_(-50.0)  # every sentence exists, so each one is read back
        for part in (F.sentence_lstm, F.topic, F.word_lstm):  # words that follow the topics
            for p in part.parameters():
                p.normal_(0.0, 1.0)
        F.word_out.weight.normal_(0.0, 2.0)
        F.word_out.bias.zero_()
        F.word_out.bias[[Vocabulary.pad_id, Vocabulary.eos_id]] = -10.0  # sentences of several words
        ids = F(images, mode="greedy")
        _, word_logits, _ = F(images, ids)
    # Teacher forcing on F's own report reproduces every word it wrote: the two modes feed back the same.
    written = _first_eos_mask(ids)
    assert torch.equal(word_logits.argmax(-1)[written], ids[written])
    assert len({tuple(row.tolist()) for row in ids[0]}) > 1, "every sentence alike: the test shows nothing"


@pytest.mark.parametrize("buckets", [1, 2, 3])
def test_teacher_forcing_runs_each_sentence_as_far_as_it_goes_and_reuses_given_features(monkeypatch, buckets):
    monkeypatch.setattr(emixer, "WORD_BUCKETS", buckets)
    torch.manual_seed(1)
    F = build_networks(make_config(TINY, max_words=8))["F"].eval()
    images = torch.randn(B, 1, 32, 32)
    reports = torch.randint(Vocabulary.unk_id + 1, 20, (B, 3, 8))
    lengths = torch.tensor([[8, 2, 0], [1, 5, 3], [6, 0, 0]])  # <eos> included; report 2 has one sentence
    for (i, j), n in np.ndenumerate(lengths.numpy()):
        reports[i, j, n - 1:] = Vocabulary.eos_id
        reports[i, j, n:] = Vocabulary.pad_id
    with torch.no_grad():
        features = F(images, mode="features")
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7)
                   for a, b in zip(F(images, reports), F(images, reports, features=features)))
    stop, words, _ = F(images, reports, features=features)
    # every row through the word LSTM at full length, as if each sentence existed and went on
    topics, plain_stop = F._teacher_sentences(F.feature(features), reports)
    rows = reports.reshape(B * 3, 8)
    bos = F.word_embed.weight[Vocabulary.bos_id].expand(B * 3, 1, -1)
    out, _ = F.word_lstm(torch.cat([topics.reshape(B * 3, 1, -1), bos, F.word_embed(rows[:, :-1])], dim=1))
    every_row = F.word_out(out[:, 1:]).view(B, 3, 8, -1)
    target = reports != Vocabulary.pad_id
    assert torch.allclose(words[target], every_row[target], rtol=1e-5, atol=1e-6)
    assert not words[~target].any() and int((~(target.any(-1))).sum()) == 3
    grads = []
    for stop_logits, word_logits in ((stop, words), (plain_stop, every_row)):
        F.zero_grad()
        sum(report_nll(stop_logits, word_logits, reports)).backward(retain_graph=True)
        grads.append({name: p.grad.clone() for name, p in F.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]["word_lstm.weight_hh_l0"].abs().sum() > 0
    assert all(torch.allclose(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7) for name in grads[0])
    with torch.no_grad():  # no sentence at all: row 0's first word alone runs, so that every parameter takes part
        nothing = F(images, torch.full_like(reports, Vocabulary.pad_id), features=features)[1]
    assert nothing.shape == words.shape and not nothing[:, :, 1:].any() and not nothing[1:].any()


def test_word_buckets_cut_where_the_fewest_padded_steps_run():
    assert emixer._buckets([1, 1, 1, 5, 5, 9], 2) == [(0, 3), (3, 6)]  # 3 x 1 + 3 x 9 against 5 x 5 + 9
    assert emixer._buckets([1, 1, 1, 5, 5, 9], 3) == [(0, 3), (3, 5), (5, 6)]
    assert emixer._buckets([4, 4, 4], 2) == [(0, 3)]  # one length: nothing to cut
    assert emixer._buckets([3], 1) == [(0, 1)]


@pytest.mark.parametrize("feedback", [True, False])
def test_a_sentence_reads_the_one_before_it_only_with_feedback(feedback):
    torch.manual_seed(0)
    F = build_networks(make_config(TINY, sentence_feedback=feedback))["F"].eval()
    images = torch.randn(B, 1, 32, 32)
    reports = torch.randint(Vocabulary.unk_id + 1, 20, (B, 3, 5))
    changed = reports.clone()
    changed[:, 0] = torch.randint(Vocabulary.unk_id + 1, 20, (B, 5))
    with torch.no_grad():
        stop, words, _ = F(images, reports)
        stop2, words2, _ = F(images, changed)
    assert torch.equal(stop[:, 0], stop2[:, 0])
    assert torch.equal(words[:, :, 0], words2[:, :, 0]) is not feedback  # first words: the topics alone
    assert torch.allclose(stop[:, 1], stop2[:, 1]) is not feedback


def test_generate_is_deterministic_given_z(nets):
    z, labels = _inputs()
    images, ids = generate(nets, labels, z)
    again, ids_again = generate(nets, labels, z)
    assert images.dtype == "uint8" and images.shape == (B, 32, 32) and ids.shape == (B, 3, 5)
    assert (images == again).all() and (ids == ids_again).all()
    other, _ = generate(nets, labels, z + 1)
    assert (other != images).any()
    sampled = [generate(nets, labels, z, word_temperature=1.5, generator=torch.Generator().manual_seed(7),
                        max_sentences=2, max_words=4)[1] for _ in range(2)]
    assert sampled[0].shape == (B, 2, 4) and (sampled[0] == sampled[1]).all()
    for m in nets.values():
        m.train()


def test_decode_reports():
    vocab = Vocabulary(["heart", "normal", "."])
    ids = vocab.encode_sentences("Heart normal. Normal.", 3, 5)[None]
    assert decode_reports(ids, vocab) == ["heart normal. normal."]


def _sequence_log_probs(F, topic: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Log-probability of each row of `words` (N, W) after `topic`, up to and including its first <eos>
    (teacher-forced, all rows as one batch); -inf where a word other than <pad> follows that <eos> (the
    beam's rule: a finished sentence continues with <pad> at no cost)."""
    n = words.shape[0]
    bos = F.word_embed.weight[Vocabulary.bos_id].expand(n, 1, -1)
    inputs = torch.cat([topic.expand(n, 1, -1), bos, F.word_embed(words[:, :-1])], dim=1)
    out, _ = F.word_lstm(inputs)
    log_p = torch.log_softmax(F.word_out(out[:, 1:]), dim=-1).gather(2, words[:, :, None])[:, :, 0]
    after_eos = torch.cumsum(words == Vocabulary.eos_id, dim=1) - (words == Vocabulary.eos_id).long() > 0
    total = torch.where(after_eos, torch.zeros_like(log_p), log_p).sum(dim=1)
    return torch.where((after_eos & (words != Vocabulary.pad_id)).any(dim=1), float("-inf"), total)


def test_beam_search_finds_the_most_likely_words_and_width_one_is_greedy():
    import itertools

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = make_config(TINY, vocab_size=6, max_words=3)
    F = build_networks(config)["F"].eval()
    with torch.no_grad():
        F.word_out.weight.mul_(8.0)  # peaked word distributions, where greedy and best part ways
        topics = torch.randn(6, config["word_embedding"])
        greedy = F._words(topics, 3, "greedy", 1.0, None)
        assert torch.equal(F._beam_words(topics, 3, 1), greedy)
        exhaustive = F._beam_words(topics, 3, 6 ** 3)  # a beam as wide as every sequence: exact
        every = torch.tensor(list(itertools.product(range(6), repeat=3)))
        differs = 0
        for topic, found, first in zip(topics, exhaustive, greedy):
            scores = _sequence_log_probs(F, topic, every)
            score_of = {tuple(w): float(v) for w, v in zip(every.tolist(), scores)}
            assert score_of[tuple(found.tolist())] == pytest.approx(float(scores.max()), abs=1e-5)
            assert score_of[tuple(found.tolist())] >= score_of[tuple(first.tolist())] - 1e-5
            differs += not torch.equal(found, first)
        assert differs, "no topic where the best words differ from the greedy ones: the test shows nothing"


def test_report_beam_decodes_through_generate(nets):
    z, labels = _inputs()
    wide = build_by_name("emixer", make_config(TINY, report_beam=3), seed=0)
    _, greedy_ids = generate(nets, labels, z)
    _, beam_ids = generate(wide, labels, z)
    assert beam_ids.shape == greedy_ids.shape
    assert (beam_ids == generate(wide, labels, z)[1]).all()  # a function of its inputs
    for m in (*nets.values(), *wide.values()):
        m.train()
