"""The sample dict every factory.stream source yields, how shard members decode into it, and collate.

A sample (the same keys from a run, from a real StudyDataset wrapped by `study_samples`, and from `mix`):

    __key__    str               `{run_id}-{index:010d}` for a run, the study id for a real dataset
    __url__    str               the shard (or dataset) it came from, for error messages and audits
    __source__ str               "real" or "synthetic" (set by `mix` only)
    image      float32 array     the main image, (C, H, W): `png` if present, else `ct.png`, else the
                                 first image member; 8-bit / 255 and 16-bit / 65535 so values lie in
                                 [0, 1] (or the stored integers as floats with scale="raw", e.g. CT
                                 as HU + 1024)
    images     dict[str, array]  every image member by extension (`png`, `ct.png`, `src.png`), decoded alike
    report     str | None        the `txt` member (None for image and translation samples)
    labels     float32 array     the sample's labels in `label_names` order (1 present, 0 absent,
                                 -1 uncertain, NaN when the sample does not name that label)
    label      int               the `cls` member, index of the primary label (-1 when absent)
    meta       dict              the `json` member (schemas/sample.schema.json), as stored

Arrays are torch tensors (arrays="torch", the default) or numpy arrays (arrays="numpy"), the same
values either way: torch is not a dependency of the base install, so a consumer without it streams
numpy arrays.

Decoding never unpickles: webdataset's default decoders would unpickle `.pyd` and torch.load `.pth`
members, so the decoder here is built with only the handlers below, and other members stay bytes.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import webdataset as wds
from PIL import Image

from factory.errors import BadInputError, FactoryError

MAIN_IMAGE_ORDER = ("png", "ct.png")
IMAGE_SUFFIX = "png"
SCALES = ("unit", "raw")
ARRAYS = ("torch", "numpy")


def check_arrays(arrays: str) -> None:
    """Refuse an unknown array kind, and torch where it is not installed, before any shard is read."""
    if arrays not in ARRAYS:
        raise ValueError(f"arrays must be one of {ARRAYS}, got {arrays!r}")
    if arrays == "torch":
        try:
            import torch  # noqa: F401
        except ModuleNotFoundError as err:
            raise FactoryError("factory.stream gives torch tensors by default and torch is not installed: "
                               "install PyTorch, or pass arrays='numpy'") from err


def as_arrays(array: np.ndarray, arrays: str) -> Any:
    """A numpy array as the array kind asked for (torch shares the memory, no copy)."""
    if arrays == "numpy":
        return array
    import torch

    return torch.from_numpy(array)


def decode_image(data: bytes, scale: str = "unit", arrays: str = "torch") -> Any:
    """PNG bytes -> float32 (C, H, W); 8-bit / 255, 16-bit / 65535 with scale="unit"."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        mode = image.mode
        if mode in ("L", "RGB", "RGBA", "LA"):
            array, full = np.asarray(image, dtype=np.uint8), 255.0
        elif mode.startswith("I;16"):
            array, full = np.asarray(image).astype(np.uint16), 65535.0
        else:
            raise ValueError(f"PNG mode {mode!r} is not 8- or 16-bit grayscale or 8-bit colour")
    array = array.astype(np.float32)
    array = array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
    if scale == "unit":
        array /= np.float32(full)
    return as_arrays(array, arrays)


class MemberDecoder:
    """A webdataset decoder handler `(".ext", bytes) -> value`, or None to leave a member as bytes."""

    def __init__(self, scale: str = "unit", arrays: str = "torch"):
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        check_arrays(arrays)
        self.scale = scale
        self.arrays = arrays

    def __call__(self, key: str, data: bytes) -> Any:
        extension = key.rsplit(".", 1)[-1].lower()
        if extension == IMAGE_SUFFIX:
            return decode_image(data, self.scale, self.arrays)
        if extension == "txt":
            return data.decode("utf-8")
        if extension == "json":
            document = json.loads(data)
            if not isinstance(document, dict):
                raise ValueError("json member is not an object")
            return document
        if extension == "cls":
            return int(data.decode("ascii").strip())
        return None


class SampleDecoder:
    """Decode a raw webdataset sample (member bytes) into the sample dict documented above."""

    def __init__(self, label_names: Sequence[str], scale: str = "unit", arrays: str = "torch"):
        self.label_names = tuple(label_names)
        self.arrays = arrays
        # pre/post emptied: no gunzip of `.gz`, and above all none of the pickle/torch.load handlers
        self.decoder = wds.autodecode.Decoder([MemberDecoder(scale, arrays)], pre=[], post=[])

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        try:
            decoded = self.decoder(raw)
        except wds.autodecode.DecodingError as err:
            cause = err.__cause__
            raise BadInputError(str(err.url),
                                f"sample {err.key}: member {err.k!r} cannot be decoded ({cause})") from err
        return to_sample(decoded, self.label_names, self.arrays)


def main_image_key(extensions: Iterable[str]) -> str | None:
    images = sorted(e for e in extensions if e.rsplit(".", 1)[-1] == IMAGE_SUFFIX)
    for preferred in MAIN_IMAGE_ORDER:
        if preferred in images:
            return preferred
    return images[0] if images else None


def to_sample(decoded: Mapping[str, Any], label_names: Sequence[str], arrays: str = "torch") -> dict[str, Any]:
    """Arrange decoded members into the documented sample dict."""
    key, url = decoded.get("__key__"), decoded.get("__url__")
    images = {k: v for k, v in decoded.items() if not k.startswith("__") and k.rsplit(".", 1)[-1] == IMAGE_SUFFIX}
    main = main_image_key(images)
    if main is None:
        raise BadInputError(str(url), f"sample {key}: no png member")
    meta = decoded.get("json") or {}
    sample = {
        "__key__": key,
        "__url__": url,
        "image": images[main],
        "images": images,
        "report": decoded.get("txt"),
        "labels": label_vector(meta.get("labels") or {}, label_names, arrays),
        "label": int(decoded["cls"]) if "cls" in decoded else -1,
        "meta": meta,
    }
    return sample


def label_vector(values: Mapping[str, float], label_names: Sequence[str], arrays: str = "torch") -> Any:
    vector = np.array([float(values.get(name, math.nan)) for name in label_names], dtype=np.float32)
    return as_arrays(vector, arrays)


class LabelFilter:
    """Keep a sample when any `include` label is positive (1) and no `exclude` label is; uncertain
    (-1) and unmentioned labels count as not positive. Works on raw samples (parses only the json
    member, before any image is decoded) and on decoded ones."""

    def __init__(self, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None):
        self.include = tuple(include or ())
        self.exclude = tuple(exclude or ())

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude)

    def labels_of(self, sample: Mapping[str, Any]) -> Mapping[str, float]:
        meta = sample.get("meta", sample.get("json"))
        if isinstance(meta, (bytes, bytearray)):
            try:
                meta = json.loads(meta)
            except ValueError as err:
                raise BadInputError(str(sample.get("__url__")), f"sample {sample.get('__key__')}: json member is "
                                    f"not valid JSON ({err})") from err
        labels = (meta or {}).get("labels") if isinstance(meta, dict) else None
        return labels if isinstance(labels, dict) else {}

    def __call__(self, sample: Mapping[str, Any]) -> bool:
        labels = self.labels_of(sample)
        if self.include and not any(labels.get(name) == 1 for name in self.include):
            return False
        return not any(labels.get(name) == 1 for name in self.exclude)


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch sample dicts for torch DataLoader(collate_fn=collate) or a pipeline's .batched(n, collation_fn=collate):
    arrays are stacked (images must share a shape; torch tensors into a tensor, numpy arrays into an
    array), `label` becomes an int64 tensor or array alike, and strings, reports (which may be None) and
    metadata become lists."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    batch: dict[str, Any] = {}
    arrays = "numpy" if isinstance(samples[0].get("image"), np.ndarray) else "torch"
    for name in samples[0]:
        values = [sample.get(name) for sample in samples]
        if name in ("image", "labels"):
            batch[name] = _stack(values, name, samples)
        elif name == "images":
            common = set.intersection(*(set(v) for v in values))
            batch[name] = {ext: _stack([v[ext] for v in values], f"images[{ext}]", samples) for ext in sorted(common)}
        elif name == "label":
            batch[name] = as_arrays(np.array(values, dtype=np.int64), arrays)
        else:
            batch[name] = values
    return batch


def _stack(values: list[Any], name: str, samples: Sequence[Mapping[str, Any]]) -> Any:
    first = values[0].shape
    for value, sample in zip(values, samples):
        if value.shape != first:
            raise BadInputError(str(sample.get("__url__")), f"sample {sample.get('__key__')}: {name} has shape "
                                f"{tuple(value.shape)}, the batch's first {tuple(first)}; resize in a .map() stage "
                                "or batch samples of one size")
    if isinstance(values[0], np.ndarray):
        return np.stack(values)
    import torch

    return torch.stack(values)
