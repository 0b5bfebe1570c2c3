"""M, the counterfactual search of §3.4: from the representation r = I(x) of an X-ray x, the nearest
representation r' whose decoded diagnosis is another one, d'.

r' starts at r and minimises, with L-BFGS (learning rate 1, `steps` steps of at most `max_iter`
iterations each: the paper's 1, 100 and 20),

    L_M = -log p(d' | r')  +  ||G1(r') - x||^2  +  ||r' - r||^2          (eq. 2-5)

with both squared distances as mean squared errors (the paper implements them so). G1 is the stage-1
generator, whose output size I reads. If the search ends on a representation that does not decode to
d', it starts again from r + z, z a small normal vector (`restart_scale`), at most `restarts` times.

The search stops before `steps` once a step changes L_M by less than a relative 1e-7 (it has
converged; L-BFGS would not move r' further). Each image is searched on its own (L-BFGS's curvature
estimate would otherwise couple a batch), its restart noise drawn afresh from `seed`: the result for
an image depends on that image, its target and the seed alone, not on the rest of its batch. The
networks are used as they are (the caller puts them in eval mode) and are not changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

CONVERGED = 1e-7  # relative change of L_M over one L-BFGS step below which the search has converged


@dataclass
class Search:
    """M's result for a batch: r' (B, r_dim), the target d' (B,), whether r' decodes to d' (B,), and
    L_M's final value per image (B,)."""

    representation: torch.Tensor
    target: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor


def counterfactual_search(diagnosis_logits: Callable[[torch.Tensor], torch.Tensor],
                          render: Callable[[torch.Tensor], torch.Tensor], r: torch.Tensor, images: torch.Tensor,
                          target: torch.Tensor, *, lr: float = 1.0, steps: int = 100, max_iter: int = 20,
                          restarts: int = 2, restart_scale: float = 0.1, seed: int = 0) -> Search:
    """M for each row: `diagnosis_logits(r)` -> (B, num_labels) (the decoder's first output on r's code),
    `render(r)` -> stage-1 images like `images` (B, C, s1, s1), `r` (B, r_dim) from I, `target` (B,)
    the diagnoses d' to reach. Gradients flow only into r'."""
    found, reached, losses = [], [], []
    for i in range(r.shape[0]):
        origin, x, want = r[i : i + 1].detach(), images[i : i + 1].detach(), target[i : i + 1]
        noise = torch.Generator(device="cpu").manual_seed(seed)
        start = origin
        for attempt in range(restarts + 1):
            candidate, loss = _search(diagnosis_logits, render, origin, start, x, want, lr, steps, max_iter)
            with torch.no_grad():
                ok = bool(diagnosis_logits(candidate).argmax(dim=1).eq(want).all())
            if ok or attempt == restarts:
                break
            z = torch.randn(origin.shape, generator=noise).to(device=origin.device, dtype=origin.dtype)
            start = origin + restart_scale * z
        found.append(candidate)
        reached.append(ok)
        losses.append(loss)
    return Search(torch.cat(found), target.clone(), torch.tensor(reached), torch.tensor(losses))


def alternative_loss(diagnosis_logits, render, origin, candidate, x, want) -> torch.Tensor:
    """L_M of eq. 5 for one image."""
    return (F.cross_entropy(diagnosis_logits(candidate).float(), want)
            + F.mse_loss(render(candidate).float(), x.float())
            + F.mse_loss(candidate.float(), origin.float()))


def _search(diagnosis_logits, render, origin, start, x, want, lr, steps, max_iter) -> tuple[torch.Tensor, float]:
    candidate = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([candidate], lr=lr, max_iter=max_iter)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = alternative_loss(diagnosis_logits, render, origin, candidate, x, want)
        loss.backward()
        return loss

    with torch.enable_grad():
        previous = math.inf
        for _ in range(steps):
            loss = float(optimizer.step(closure).detach())
            if abs(previous - loss) <= CONVERGED * max(1.0, abs(loss)):
                break  # converged: further steps would not move r'
            previous = loss
        with torch.no_grad():
            loss = alternative_loss(diagnosis_logits, render, origin, candidate, x, want)
    return candidate.detach(), float(loss)
