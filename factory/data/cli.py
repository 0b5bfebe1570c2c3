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


def run(args: argparse.Namespace) -> int:
    if args.kind == "cxr":
        from factory.data.phantoms.cxr import write_dataset

        write_dataset(out=args.out, count=args.count, size=args.size, layout=args.layout, seed=args.seed)
    else:
        from factory.data.phantoms.brain import write_dataset

        write_dataset(out=args.out, count=args.count, modality=args.modality, fmt=args.format,
                      dims=args.dims, size=args.size, seed=args.seed)
    return 0
