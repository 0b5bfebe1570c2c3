"""Memorization audit: is any synthetic image a copy, or a near copy, of a training image?

For each synthetic image, the distance to its nearest training image is measured in two spaces:
a feature space (any callable `features(images) -> (N, D)`, e.g. the judge's penultimate layer) and
raw pixels. What counts as "close" is learnt from real data: held-out real images (never trained on)
are compared with the training set in the same way, and the 1st percentile of those real-to-real
nearest-neighbour distances is the threshold. A generator that merely learnt the distribution
produces about 1 % of samples below it, as a fresh real image would; a generator that memorised
produces its copies far below it. The audit reports the threshold, the share of synthetic samples
below it, those samples (index, key, distance, the training image they sit next to), and both
distance distributions as histogram data for a report.

Distances are root-mean-square differences per dimension (Euclidean distance / sqrt(D)): in pixel
space with images in [0, 1] that reads as a typical per-pixel difference, and it does not grow with
image size. Nearest neighbours are found with torch.cdist in blocks, so the distance matrix held at
once stays near `block_elements` floats however many images there are (the embeddings themselves,
N x D, are held in full: for tens of thousands of large images pass them downsampled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from factory.errors import BadInputError

Features = Callable[[torch.Tensor], torch.Tensor]
Images = torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray]

DEFAULT_PERCENTILE = 1.0
BLOCK_ELEMENTS = 1 << 24  # floats per distance block (64 MiB in float32)
QUERY_ROWS = 1024


@dataclass
class Neighbours:
    distances: torch.Tensor  # (N,) Euclidean distance of each query to its nearest reference row
    indices: torch.Tensor  # (N,) index of that reference row


def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor, *, block_elements: int = BLOCK_ELEMENTS,
                       device: torch.device | str | None = None) -> Neighbours:
    """Nearest row of `reference` (M, D) for each row of `queries` (N, D), in blocks of at most about
    `block_elements` distances (and reference rows x D copied to `device`) at a time."""
    if queries.ndim != 2 or reference.ndim != 2 or queries.shape[1] != reference.shape[1]:
        raise ValueError(f"need (N, D) and (M, D) matrices, got {tuple(queries.shape)} and {tuple(reference.shape)}")
    if len(reference) == 0:
        raise ValueError("no reference rows to compare with")
    device = torch.device(device) if device is not None else queries.device
    width = queries.shape[1]
    query_rows = max(1, min(len(queries), QUERY_ROWS, block_elements))
    reference_rows = max(1, min(len(reference), block_elements // max(query_rows, width)))
    distances = torch.empty(len(queries), dtype=torch.float32)
    indices = torch.empty(len(queries), dtype=torch.long)
    for q in range(0, len(queries), query_rows):
        block = queries[q:q + query_rows].to(device, torch.float32)
        best = torch.full((len(block),), math.inf, device=device)
        best_index = torch.zeros(len(block), dtype=torch.long, device=device)
        for r in range(0, len(reference), reference_rows):
            # The matrix-product form of cdist is many times faster but loses a little precision (an
            # exact copy comes out at ~1e-3 rather than 0, by how the CPU's kernels round): it picks
            # the nearest row, whose distance is then taken directly below.
            found, where = torch.cdist(block, reference[r:r + reference_rows].to(device, torch.float32)).min(dim=1)
            better = found < best
            best = torch.where(better, found, best)
            best_index = torch.where(better, where + r, best_index)
        nearest = reference[best_index.cpu()].to(device, torch.float32)
        distances[q:q + len(block)] = (block - nearest).norm(dim=1).cpu()  # an exact copy: exactly 0
        indices[q:q + len(block)] = best_index.cpu()
    return Neighbours(distances, indices)


def pooled_pixels(size: int = 16) -> Features:
    """Features as pixels average-pooled to size x size: a network-free baseline that tolerates the
    one-pixel shifts and noise that raw pixels are sensitive to."""

    def features(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images, size).flatten(1)

    return features


def as_image_batches(images: Images, name: str, batch_size: int) -> Iterable[torch.Tensor]:
    """(B, C, H, W) float batches from a tensor/array (N, H, W) or (N, C, H, W), or an iterable of
    such batches or of single images; uint8 / uint16 scaled to [0, 1]."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        tensor = _as_float(images, name)
        if tensor.ndim == 3:
            tensor = tensor[:, None]
        if tensor.ndim != 4:
            raise BadInputError(name, f"expected (N, H, W) or (N, C, H, W) images, got shape {tuple(tensor.shape)}")
        for start in range(0, len(tensor), batch_size):
            yield tensor[start:start + batch_size]
        return
    pending: list[torch.Tensor] = []
    for item in images:
        tensor = _as_float(item, name)
        if tensor.ndim in (2, 3):  # one image: (H, W) or (C, H, W)
            pending.append(tensor if tensor.ndim == 3 else tensor[None])
            if len(pending) == batch_size:
                yield _stack(pending, name)
                pending = []
        elif tensor.ndim == 4:
            if pending:
                yield _stack(pending, name)
                pending = []
            yield tensor
        else:
            raise BadInputError(name, f"expected images or batches of images, got shape {tuple(tensor.shape)}")
    if pending:
        yield _stack(pending, name)


def _as_float(images: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint16:  # torch has no uint16 arithmetic to speak of
            images = images.astype(np.int32) / 65535.0
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise BadInputError(name, f"expected tensors or arrays, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise BadInputError(name, f"images of dtype {images.dtype}: give floats in [0, 1], uint8 or uint16")
    return images.float()


def _stack(images: list[torch.Tensor], name: str) -> torch.Tensor:
    if len({tuple(i.shape) for i in images}) > 1:
        raise BadInputError(name, f"images differ in shape ({sorted({tuple(i.shape) for i in images})})")
    return torch.stack(images)


def embed(images: Images, name: str, features: Features | None, batch_size: int = 256,
          device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flattened pixels (N, C*H*W) and features (N, D) (None without a feature callable), on the CPU,
    in one pass over `images`."""
    pixels, feats, shape = [], [], None
    with torch.no_grad():
        for batch in as_image_batches(images, name, batch_size):
            if shape is None:
                shape = tuple(batch.shape[1:])
            elif tuple(batch.shape[1:]) != shape:
                raise BadInputError(name, f"images differ in shape ({shape} and {tuple(batch.shape[1:])})")
            pixels.append(batch.flatten(1).cpu())
            if features is not None:
                out = features(batch.to(device) if device is not None else batch)
                if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != len(batch):
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise BadInputError(name, f"features() must return (N, D) for N images; for {len(batch)} it "
                                        f"returned {got}")
                feats.append(out.detach().float().cpu())
    if shape is None:
        raise BadInputError(name, "no images")
    return torch.cat(pixels), (torch.cat(feats) if features is not None else None)


@dataclass
class SpaceAudit:
    """The audit in one space ("features" or "pixels")."""

    space: str
    percentile: float
    threshold: float  # the percentile of real-to-real nearest-training distances
    share: float  # share of synthetic samples whose nearest-training distance is below threshold
    flagged: list[dict[str, Any]]  # those samples, closest first
    synthetic_distances: list[float]
    real_distances: list[float]
    synthetic_neighbours: list[int]  # index of each synthetic sample's nearest training image
    histogram: dict[str, list[float]]  # shared bin edges; counts of synthetic and real-to-real distances

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class MemorizationAudit:
    spaces: dict[str, SpaceAudit]
    counts: dict[str, int]
    flagged_any: list[int] = field(default_factory=list)  # synthetic indices flagged in any space

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "flagged_any": self.flagged_any,
                "spaces": {name: audit.to_dict() for name, audit in self.spaces.items()}}

    def summary(self) -> str:
        lines = [f"memorization audit: {self.counts['synthetic']} synthetic vs {self.counts['train']} training images, "
                 f"threshold from {self.counts['held_out']} held-out real images"]
        for audit in self.spaces.values():
            lines.append(f"  {audit.space:<9} p{audit.percentile:g} of real-to-real = {audit.threshold:.4g}; "
                         f"{len(audit.flagged)} synthetic closer ({audit.share:.2%})")
        lines.append(f"  flagged in any space: {len(self.flagged_any)}")
        return "\n".join(lines)


def audit_memorization(
    train: Images,
    synthetic: Images,
    held_out: Images,
    *,
    features: Features | None = None,
    synthetic_keys: Sequence[str] | None = None,
    train_keys: Sequence[str] | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    bins: int = 40,
    batch_size: int = 256,
    block_elements: int = BLOCK_ELEMENTS,
    device: torch.device | str | None = None,
) -> MemorizationAudit:
    """Audit `synthetic` images against `train`, with `held_out` real images setting the threshold.

    Images: tensors/arrays (N, H, W) or (N, C, H, W) (floats in [0, 1], uint8 or uint16), or an
    iterable of such batches or single images; all three sets must share one shape. `features` is
    called on float batches (B, C, H, W) moved to `device`, under torch.no_grad().
    """
    if not 0 < percentile < 100:
        raise BadInputError("percentile", f"must lie in (0, 100), got {percentile}")
    train_pixels, train_features = embed(train, "training images", features, batch_size, device)
    synthetic_pixels, synthetic_features = embed(synthetic, "synthetic images", features, batch_size, device)
    held_pixels, held_features = embed(held_out, "held-out images", features, batch_size, device)
    for name, pixels in (("synthetic images", synthetic_pixels), ("held-out images", held_pixels)):
        if pixels.shape[1] != train_pixels.shape[1]:
            raise BadInputError(name, f"have {pixels.shape[1]} pixels per image, the training images "
                                f"{train_pixels.shape[1]}: compare images of one size")
    for name, keys, count in (("synthetic_keys", synthetic_keys, len(synthetic_pixels)),
                              ("train_keys", train_keys, len(train_pixels))):
        if keys is not None and len(keys) != count:
            raise BadInputError(name, f"{len(keys)} keys for {count} images")
    spaces = {"pixels": (train_pixels, synthetic_pixels, held_pixels)}
    if features is not None:
        spaces = {"features": (train_features, synthetic_features, held_features), **spaces}
    audits = {}
    for space, (reference, queries, real) in spaces.items():
        audits[space] = _audit_space(space, reference, queries, real, percentile, bins, block_elements, device,
                                     synthetic_keys, train_keys)
    flagged_any = sorted({item["index"] for audit in audits.values() for item in audit.flagged})
    counts = {"train": len(train_pixels), "synthetic": len(synthetic_pixels), "held_out": len(held_pixels)}
    return MemorizationAudit(audits, counts, flagged_any)


def _audit_space(space: str, reference: torch.Tensor, queries: torch.Tensor, real: torch.Tensor, percentile: float,
                 bins: int, block_elements: int, device, synthetic_keys, train_keys) -> SpaceAudit:
    scale = 1.0 / math.sqrt(reference.shape[1])  # Euclidean -> root-mean-square per dimension
    synthetic = nearest_neighbours(queries, reference, block_elements=block_elements, device=device)
    real_to_real = nearest_neighbours(real, reference, block_elements=block_elements, device=device)
    synthetic_d = (synthetic.distances.double() * scale).numpy()
    real_d = (real_to_real.distances.double() * scale).numpy()
    threshold = float(np.percentile(real_d, percentile))
    below = np.flatnonzero(synthetic_d < threshold)
    below = below[np.argsort(synthetic_d[below], kind="stable")]
    flagged = []
    for i in below.tolist():
        nearest = int(synthetic.indices[i])
        flagged.append({
            "index": i,
            "key": synthetic_keys[i] if synthetic_keys is not None else None,
            "distance": float(synthetic_d[i]),
            "nearest_train_index": nearest,
            "nearest_train_key": train_keys[nearest] if train_keys is not None else None,
        })
    top = max(float(synthetic_d.max()), float(real_d.max()), threshold) or 1.0
    edges = np.linspace(0.0, top, bins + 1)
    return SpaceAudit(
        space=space,
        percentile=percentile,
        threshold=threshold,
        share=len(flagged) / len(synthetic_d),
        flagged=flagged,
        synthetic_distances=synthetic_d.tolist(),
        real_distances=real_d.tolist(),
        synthetic_neighbours=synthetic.indices.tolist(),
        histogram={"edges": edges.tolist(), "synthetic": np.histogram(synthetic_d, edges)[0].tolist(),
                   "real": np.histogram(real_d, edges)[0].tolist()},
    )
