"""Shared plumbing of the job steps' command lines (standard library only).

A step's main() raises StepError(reason, message) for anything the user can fix; run_step
turns that (or any unexpected exception) into: one line on stderr, a result document with
ok=false written to $EDGETUNE_RESULT_PATH, and a non-zero exit code.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, Callable, Mapping

from . import contract


class StepError(Exception):
    """A failure with a machine-readable reason (CamelCase) and a one-line message."""

    def __init__(self, reason: str, message: str, exit_code: int = 1):
        super().__init__(message)
        self.reason = reason
        self.message = " ".join(str(message).split())  # one line
        self.exit_code = exit_code


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, StepError) else text


def fail(step: str, reason: str, message: str, *, result_path: str | None = None,
         provenance: Mapping[str, Any] | None = None, exit_code: int = 1) -> int:
    """Report a failure: stderr line + ok=false result document. Returns the exit code."""
    message = " ".join(str(message).split())
    print(f"{step}: {reason}: {message}", file=sys.stderr, flush=True)
    try:
        contract.write_result(contract.make_result(step, False, reason=reason, message=message,
                                                   provenance=provenance), result_path)
    except OSError as exc:  # e.g. /dev/termination-log outside a Pod
        print(f"{step}: could not write the result document: {exc}", file=sys.stderr, flush=True)
    return exit_code


def run_step(step: str, main: Callable[[], dict[str, Any]], *, result_path: str | None = None,
             debug_env: str = "EDGETUNE_DEBUG") -> int:
    """Run main() -> result document; write it; map errors to ok=false documents."""
    started = time.monotonic()
    try:
        doc = main()
    except StepError as exc:
        return fail(step, exc.reason, exc.message, result_path=result_path, exit_code=exc.exit_code,
                    provenance={"seconds": round(time.monotonic() - started, 3)})
    except KeyboardInterrupt:
        return fail(step, "Interrupted", "interrupted", result_path=result_path, exit_code=130)
    except Exception as exc:  # noqa: BLE001 - the Pod must always leave a result document
        if os.environ.get(debug_env):
            traceback.print_exc()
        else:
            traceback.print_exc(limit=-3)
        return fail(step, "Failed", one_line(exc), result_path=result_path,
                    provenance={"seconds": round(time.monotonic() - started, 3)})
    path = contract.write_result(doc, result_path)
    print(f"{step}: result written to {path}", file=sys.stderr, flush=True)
    return 0 if doc.get("ok") else 1
