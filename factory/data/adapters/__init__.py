"""Adapters: real (or phantom) datasets on disk or object storage -> one `StudyDataset` interface."""

from __future__ import annotations

from factory.data.adapters.cxr import ADAPTERS
from factory.data.dataset import StudyDataset

LAYOUTS = (*ADAPTERS, "volumes")


def open_dataset(root: str, layout: str, size: int | tuple[int, int] | None = None, skip_bad: bool = False,
                 **options) -> StudyDataset:
    """Open `root` (a local path or fsspec URL) laid out as `layout`; see factory/data/adapters/cxr.py for
    the folder tree of each chest X-ray layout. `options` go to the adapter (e.g. storage_options)."""
    if layout == "volumes":
        from factory.data.adapters.volumes import open_volumes

        return open_volumes(root, size=size, skip_bad=skip_bad, **options)
    if layout not in ADAPTERS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return ADAPTERS[layout](root, size=size, skip_bad=skip_bad, **options)
