"""argparse for the job steps: a usage error becomes StepError("InvalidInput", ...), so it
ends as one stderr line and an ok=false result document (argparse alone would print the
usage and exit 2 without a result)."""

from __future__ import annotations

import argparse

from .cli import StepError


class StepArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise StepError("InvalidInput", f"{self.prog}: {message}", exit_code=2)
