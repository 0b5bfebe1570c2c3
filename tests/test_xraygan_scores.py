"""UCGAN's scores (eq. 7-10) and its classifier's labels, each against values worked out by hand on
batches of two or three samples over two or three classes."""

from __future__ import annotations

import math

import pytest
import torch

from factory.models.xraygan.scores import (content_loss, gram, inception_score_loss, mmd, pseudo_labels,
                                           style_loss, style_transfer_loss)
from factory.models.xraygan.ucgan import class_targets
from factory.train.recipes.xraygan import pseudo_label_loss, soft_cross_entropy


def test_inception_score_loss_is_the_mean_kl_from_the_batch_marginal():
    # Two certain samples of different classes: marginal (1/2, 1/2), each KL = log 2.
    assert inception_score_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).item() == pytest.approx(math.log(2))
    # All samples alike: nothing separates them from the marginal.
    assert inception_score_loss(torch.full((3, 3), 1 / 3)).item() == pytest.approx(0.0, abs=1e-7)
    # Marginal (0.6, 0.4): KL1 = 0.8 ln(0.8/0.6) + 0.2 ln(0.2/0.4) = 0.091516,
    # KL2 = 0.4 ln(0.4/0.6) + 0.6 ln(0.6/0.4) = 0.081093; mean 0.086305 = H(0.6, 0.4) - mean H(p_i).
    probs = torch.tensor([[0.8, 0.2], [0.4, 0.6]], requires_grad=True)
    value = inception_score_loss(probs)
    assert value.item() == pytest.approx(0.0863046, rel=1e-5)
    value.backward()
    assert probs.grad is not None and torch.isfinite(probs.grad).all()


def test_mmd_is_the_unbiased_estimate_over_distinct_pairs():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # N = 2: k(x1,x2) + k(y1,y2) - k(x1,y2) - k(x2,y1) = 1 + 1 - 2 exp(-|(1,-1)|^2 / h).
    assert mmd(x, y).item() == pytest.approx(2 - 2 * math.exp(-2))
    assert mmd(x, y, bandwidth=2.0).item() == pytest.approx(2 - 2 * math.exp(-1))
    # N = 3: xx pairs mean (1 + 2e^-2)/3, cross pairs over i != j (1 + 2e^-2)/3, yy 1:
    # (1 + 2e^-2)/3 - 2 (1 + 2e^-2)/3 + 1 = (2 - 2e^-2)/3.
    x3 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y3 = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert mmd(x3, y3).item() == pytest.approx((2 - 2 * math.exp(-2)) / 3)
    assert mmd(x3, x3).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="same size >= 2"):
        mmd(x3, y)


def test_gram_style_and_content_losses():
    # Channels (1, 2) and (0, 1) at C=2, H=1, W=2: G = [[5, 2], [2, 1]] / 4.
    a = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]])
    assert gram(a)[0].flatten().tolist() == pytest.approx([1.25, 0.5, 0.5, 0.25])
    # Channels (1, 0) and (1, 1): G = [[1, 1], [1, 2]] / 4; the difference [[1, .25], [.25, -.25]]
    # has squared Frobenius norm 1.1875. A second sample pair (all zeros) adds 0: batch mean 0.59375.
    b = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])
    zeros = torch.zeros_like(a)
    layer, target = torch.cat([a, zeros]), torch.cat([b, zeros])
    assert style_loss([layer], [target]).item() == pytest.approx(0.59375)
    # Summed over layers: a second, identical layer adds nothing; the same layer twice doubles it.
    assert style_loss([layer, target], [target, target]).item() == pytest.approx(0.59375)
    assert style_loss([layer, layer], [target, target]).item() == pytest.approx(1.1875)
    # Content: |(1, 2) - (0, 0)|^2 / (C H W = 2) = 2.5, one sample.
    assert content_loss(torch.tensor([[[[1.0, 2.0]]]]), torch.zeros(1, 1, 1, 2)).item() == pytest.approx(2.5)
    # Eq. 10's gamma term: style of I^ against I_r over all layers + content of I^ against I_g at one.
    transferred, real, generated = [layer, a.repeat(2, 1, 1, 1)], [target, a.repeat(2, 1, 1, 1)], [zeros, zeros]
    # Content at layer 1: mean of (a - 0)^2 over 2 samples x 4 values = (1 + 4 + 0 + 1) / 4 = 1.5.
    assert style_transfer_loss(transferred, real, generated, content_layer=1).item() == pytest.approx(0.59375 + 1.5)
    with pytest.raises(ValueError, match="same layers"):
        style_loss([layer], [])


def test_pseudo_labels_take_the_most_likely_class_and_its_probability():
    classes, confidence = pseudo_labels(torch.tensor([[0.1, 0.9], [0.6, 0.4], [0.2, 0.3]]))
    assert classes.tolist() == [1, 0, 1] and confidence.tolist() == pytest.approx([0.9, 0.6, 0.3])
    # Logits (ln 9, 0): probabilities (0.9, 0.1), kept at t = 0.8 with loss -ln 0.9; (0, 0) is 0.5, dropped.
    logits = torch.tensor([[math.log(9.0), 0.0], [0.0, 0.0]], requires_grad=True)
    loss, kept = pseudo_label_loss(logits, threshold=0.8)
    assert loss.item() == pytest.approx(-math.log(0.9)) and kept.item() == 0.5
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    none, kept = pseudo_label_loss(logits.detach(), threshold=0.95)
    assert none.item() == 0.0 and kept.item() == 0.0


def test_class_targets_share_the_positive_findings_else_no_finding():
    names = ("No Finding", "Edema", "Support Devices")
    labels = torch.tensor([[1.0, 0, 0], [1, 0, 1], [0, 1, 1], [0, 0, 0]])
    assert class_targets(labels, names).tolist() == [[1, 0, 0], [0, 0, 1], [0, 0.5, 0.5], [1, 0, 0]]
    # Without a No Finding label a study with no positive has no target, and weighs nothing.
    targets = class_targets(torch.tensor([[0.0, 0.0], [0.0, 1.0]]), ("Edema", "Mass"))
    assert targets.tolist() == [[0, 0], [0, 1]]
    # Cross-entropy: row 2 has p(Mass) = 1/2 -> ln 2, averaged over the one row with a target.
    assert soft_cross_entropy(torch.zeros(2, 2), targets).item() == pytest.approx(math.log(2))
