"""`medsynth data cxr|brain`: write phantom datasets in the folder layouts of real datasets."""

from __future__ import annotations

import argparse

CXR_LAYOUTS = ("mimic-cxr", "iu-xray", "chexpert", "nih", "folder")


def configure(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    cxr = kinds.add_parser("cxr", help="chest radiographs with reports and labels")
    cxr.add_argument("--out", required=True, help="output folder")
    cxr.add_argument("--count", type=int, required=True, help="number of studies")
    cxr.add_argument("--size", type=int, default=128, help="image side in pixels (up to 1024)")
    cxr.add_argument("--layout", choices=CXR_LAYOUTS, default="mimic-cxr")
    cxr.add_argument("--seed", type=int, default=0)

    brain = kinds.add_parser("brain", help="head CT, MRI or PET with physiological age")
    brain.add_argument("--out", required=True, help="output folder")
    brain.add_argument("--count", type=int, required=True, help="number of patients")
    brain.add_argument("--modality", choices=("ct", "mri", "pet"), required=True)
    brain.add_argument("--format", choices=("nifti", "dicom", "zarr", "png"), default="nifti")
    brain.add_argument("--dims", type=int, choices=(2, 3), default=2)
    brain.add_argument("--size", type=int, default=128, help="in-plane side in pixels")
    brain.add_argument("--seed", type=int, default=0)

    cache = kinds.add_parser("cache", help="decode a dataset you own into a Zarr cache of training tensors")
    cache.add_argument("root", help="dataset root (local path or URL)")
    cache.add_argument("--layout", required=True, choices=(*CXR_LAYOUTS, "volumes"))
    cache.add_argument("--out", required=True, help="Zarr cache URL (local path or s3://)")
    cache.add_argument("--size", type=int, help="resize images to this side")
    cache.add_argument("--skip-bad", action="store_true",
                       help="skip unreadable studies (and count them) instead of stopping at the first")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse counts and sizes the writers cannot use, in one line naming the flag, before anything is written."""
    from factory.errors import BadInputError

    if args.kind != "cache" and args.count < 1:
        raise BadInputError("--count", f"must be at least 1, got {args.count}")
    if args.kind == "cxr":
        from factory.data.phantoms.cxr import MAX_SIZE

        low, high = 16, MAX_SIZE
    elif args.kind == "brain":
        from factory.data.phantoms.brain import SIZE_RANGE

        low, high = SIZE_RANGE
    else:
        low, high = 1, None
    if args.size is not None and not (low <= args.size and (high is None or args.size <= high)):
        bound = f"lie in [{low}, {high}]" if high is not None else f"be at least {low}"
        raise BadInputError("--size", f"must {bound}, got {args.size}")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    if args.kind == "cache":
        from factory.data.adapters import open_dataset
        from factory.data.cache import CachedDataset, write_cache
        from factory.errors import BadInputError

        try:
            CachedDataset(args.out)
        except BadInputError:
            pass  # nothing there, or an unfinished cache: (re)write it
        else:  # a failed rewrite would lose a finished cache
            raise BadInputError(args.out, "already holds a finished cache; choose another --out")
        dataset = open_dataset(args.root, args.layout, size=args.size, skip_bad=args.skip_bad)
        cache = write_cache(dataset, args.out)
        print(f"{len(cache)} studies cached at {args.out}; {len(cache.skipped)} skipped")
        for source, problem in sorted(cache.skipped.items()):
            print(f"  skipped {source}: {problem}")
        return 0
    if args.kind == "cxr":
        from factory.data.phantoms.cxr import write_dataset

        write_dataset(out=args.out, count=args.count, size=args.size, layout=args.layout, seed=args.seed)
    else:
        from factory.data.phantoms.brain_formats import write_dataset

        write_dataset(out=args.out, count=args.count, modality=args.modality, fmt=args.format,
                      dims=args.dims, size=args.size, seed=args.seed)
    return 0
