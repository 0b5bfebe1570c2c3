"""Ray job: translate a source dataset's MRI/PET slices into CT shards (and its volumes into Zarr)
with an actor pool.

    python jobs/translate.py --config jobs/configs/translate.yaml [--set modality=mri ...]
    ray job submit --working-dir . -- python jobs/translate.py --config jobs/configs/translate.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir's code wins

from factory.config import TranslateConfig  # noqa: E402
from factory.cli import job_main  # noqa: E402
from factory.produce.runs import run_translation  # noqa: E402
from factory.produce.translate_cli import summary_line  # noqa: E402


def run(config: TranslateConfig, command: str) -> str:
    return summary_line(run_translation(config, command=command), config.out)


if __name__ == "__main__":
    raise SystemExit(job_main(TranslateConfig, run))
