"""`python -m edgetune_jobs.data --out DIR --dataset-source url|path|generate ...`: fetch and
prepare a dataset exactly as the finetune step does (data.prepare.fetch_and_prepare), with the
step's own dataset options (edgetune_contract.args.DatasetArgs); prints the summary as JSON."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

from edgetune_contract.args import DatasetArgs
from edgetune_contract.cliargs import ArgumentError, arg

from ..cli import StepError
from .prepare import fetch_and_prepare


@dataclass
class PrepareArgs(DatasetArgs):
    """The finetune step's dataset options (edgetune_contract.args.DatasetArgs), plus where to
    download and extract."""

    work_dir: Optional[str] = arg(help="downloads/extraction (default: a temporary folder)")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m edgetune_jobs.data`: prepare a dataset as the finetune step does."""
    try:
        a = PrepareArgs.from_argv(argv, prog="python -m edgetune_jobs.data")
        summary = fetch_and_prepare(a.out, source=a.dataset_source, url=a.dataset_url, path=a.dataset_path,
                                    fmt=a.dataset_format, val_fraction=a.val_fraction, seed=a.split_seed,
                                    class_name=a.class_name, category_attribute=a.category_attribute,
                                    work_dir=a.work_dir, generate_images=a.generate_images,
                                    generate_seed=a.generate_seed, generate_size=a.generate_size)
    except ArgumentError as exc:
        print(f"data: InvalidInput: {exc}", file=sys.stderr)
        return 2
    except StepError as exc:
        print(f"data: {exc.reason}: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
