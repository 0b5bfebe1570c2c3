"""UCGAN's scores (the paper's eq. 7-10), pure functions of the shared classifier's outputs.

Every function takes batches as tensors and returns a 0-d tensor, differentiable in its inputs, in
float32 whatever the inputs' dtype (half-precision logs and exponentials lose the small differences
these scores are made of).
"""

from __future__ import annotations

from typing import Sequence

import torch

EPS = 1e-12  # keeps log(0) finite; probabilities from a softmax are never exactly 0 in float32 anyway


def inception_score_loss(probs: torch.Tensor) -> torch.Tensor:
    """Eq. 7: the mean KL divergence of each sample's class distribution from the batch's marginal,
    E_z[KL(P(y|G(z)) || P~(y))] = H(P~(y)) - E_z[H(y|G(z))], with P~ the batch mean (the Inception
    Score's logarithm with the classifier C in place of Inception). `probs`: (N, K), rows summing to 1.

    High when each sample is classified confidently and the batch covers the classes; the paper's
    weight alpha is negative, so minimising alpha x this maximises it."""
    p = probs.float()
    marginal = p.mean(dim=0, keepdim=True)
    return (p * (torch.log(p + EPS) - torch.log(marginal + EPS))).sum(dim=1).mean()


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, bandwidth: float = 1.0) -> torch.Tensor:
    """k(a_i, b_j) = exp(-||a_i - b_j||^2 / bandwidth) for all pairs: (N, M). The paper's kernel is
    bandwidth 1."""
    return torch.exp(-torch.cdist(a.float(), b.float()).pow(2) / bandwidth)


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 1.0) -> torch.Tensor:
    """Eq. 8: the unbiased estimate of the squared kernel MMD between samples x (N, K) ~ P_r and
    y (N, K) ~ P_g (UCGAN: C's class distributions on a real and a generated batch), each term the
    mean over pairs of distinct indices:
        mean_{i != i'} k(x_i, x_i') - 2 mean_{i != j} k(x_i, y_j) + mean_{j != j'} k(y_j, y_j').
    The paper writes the normaliser as 1/C(N, 2), counting each unordered pair once; over ordered
    pairs that is the same mean. This is Gretton et al.'s MMD^2_u for equal sample sizes; it can be
    slightly negative when the distributions match."""
    n = x.shape[0]
    if y.shape[0] != n or n < 2:
        raise ValueError(f"mmd needs two batches of the same size >= 2, not {n} and {y.shape[0]}")
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=x.device)

    def mean_off_diagonal(k: torch.Tensor) -> torch.Tensor:
        return k[off_diagonal].mean()

    return (mean_off_diagonal(gaussian_kernel(x, x, bandwidth)) - 2 * mean_off_diagonal(gaussian_kernel(x, y, bandwidth))
            + mean_off_diagonal(gaussian_kernel(y, y, bandwidth)))


def gram(maps: torch.Tensor) -> torch.Tensor:
    """The style Gram matrix of feature maps (B, C, H, W): G_{c,c'} = phi_c . phi_c' / (C H W), (B, C, C)."""
    b, c, h, w = maps.shape
    flat = maps.float().reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def style_loss(maps: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 9 (and the style reconstruction loss): the squared Frobenius norm of the difference of the
    Gram matrices, summed over the layers (the paper's footnote 2) and averaged over the batch. Sample i
    of `maps` is compared with sample i of `targets` (a generated and a real film of the same batch)."""
    if len(maps) != len(targets):
        raise ValueError(f"style_loss needs the same layers on both sides, not {len(maps)} and {len(targets)}")
    return sum((gram(a) - gram(b)).pow(2).sum(dim=(1, 2)).mean() for a, b in zip(maps, targets))


def content_loss(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Johnson et al.'s feature reconstruction loss at one layer: ||phi(a) - phi(b)||^2 / (C H W),
    averaged over the batch."""
    return (maps.float() - targets.float()).pow(2).mean()


def style_transfer_loss(transferred: Sequence[torch.Tensor], real: Sequence[torch.Tensor],
                        generated: Sequence[torch.Tensor], content_layer: int) -> torch.Tensor:
    """The gamma term of eq. 10: l_style(I^, I_r) + l_content(I^, I_g), from the classifier's feature
    maps of the style-transferred image I^, the real (style) image I_r and the generated (content)
    image I_g; content at layer `content_layer`."""
    return style_loss(transferred, real) + content_loss(transferred[content_layer], generated[content_layer])


def pseudo_labels(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labelling (Lee): each sample's most likely class and its probability (the confidence a
    threshold t is compared with). `probs`: (N, K) -> (classes (N,) long, confidence (N,))."""
    confidence, classes = probs.max(dim=1)
    return classes, confidence
