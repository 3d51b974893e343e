"""The one entry point of every step: parse the step's typed arguments (its one parser, made
from its edgetune_contract.args class), run it, and leave a result document on every exit.

A step's run(args) returns its typed result, or raises StepError(reason, message) for anything
the user can fix; run_step turns that, a bad command line (InvalidInput) or any unexpected
exception into one line on stderr, an ok=false result document at $EDGETUNE_RESULT_PATH and a
non-zero exit code.

In the operator's S3 mode ($EDGETUNE_ARTIFACT_STORE=s3) run_step also moves the artifacts
(artifacts.transfer): s3:// inputs are downloaded before the step runs, and the outputs are
uploaded (manifest last) before the result document is written, so a result that says ok
means the next step can read them.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, Callable, Mapping, Optional, Sequence, Type, TypeVar

from edgetune_contract import names, results
from edgetune_contract import store as names_store
from edgetune_contract.cliargs import ArgumentError, StepArgs

A = TypeVar("A", bound=StepArgs)
# set for the worker processes of a distributed finetune (training.distributed): their
# launcher moves the artifacts, they do not
WORKER_ENV = "EDGETUNE_DIST_WORKER"


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


def fail(step: str, reason: str, message: str, *, result_path: Optional[str] = None,
         provenance: Optional[Mapping[str, Any]] = None, exit_code: int = 1) -> int:
    """Report a failure: stderr line + ok=false result document. Returns the exit code."""
    message = " ".join(str(message).split())
    print(f"{step}: {reason}: {message}", file=sys.stderr, flush=True)
    try:
        results.failure(step, reason, message, provenance).write(result_path)
    except OSError as exc:  # e.g. /dev/termination-log outside a Pod
        print(f"{step}: could not write the result document: {exc}", file=sys.stderr, flush=True)
    return exit_code


def parse(args_class: Type[A], argv: Optional[Sequence[str]] = None) -> A:
    """The step's arguments from its command line; a bad one is StepError(InvalidInput)."""
    try:
        return args_class.from_argv(argv, prog=f"python -m {names.step(args_class.STEP).module}")
    except ArgumentError as exc:
        raise StepError("InvalidInput", str(exc), exit_code=2) from None


def run_step(args_class: Type[A], run: Callable[[A], results.StepResult],
             argv: Optional[Sequence[str]] = None, *, result_path: Optional[str] = None,
             debug_env: str = "EDGETUNE_DEBUG") -> int:
    """Parse argv into args_class, run(args) -> typed result; write it; map errors to
    ok=false documents. Returns the exit code."""
    step = args_class.STEP
    started = time.monotonic()
    try:
        args = parse(args_class, argv)
        transfer = _transfer()
        if transfer is not None:
            args = transfer.fetch_inputs(args)
        result = run(args)
        if transfer is not None:
            if result.ok:
                transfer.publish(args.out, step)
            result.provenance["transfer"] = transfer.provenance()
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
    if result.STEP != step:
        return fail(step, "InvalidResult", f"the step returned a {result.STEP} result", result_path=result_path)
    if not result.ok:
        print(f"{step}: {result.reason}: {result.message}", file=sys.stderr, flush=True)
    path = result.write(result_path)
    print(f"{step}: result written to {path}", file=sys.stderr, flush=True)
    return 0 if result.ok else 1


def _transfer():
    """The artifact transfer of a step in S3 mode, else None (imports boto3 only then)."""
    if os.environ.get(names_store.ENV_STORE) != names_store.S3_SCHEME or os.environ.get(WORKER_ENV) == "1":
        return None
    from .artifacts.transfer import Transfer

    return Transfer.from_env()


def entry_point(args_class: Type[A], run: Callable[[A], results.StepResult]) -> Callable[..., int]:
    """A step module's main(argv=None, result_path=None)."""
    def main(argv: Optional[Sequence[str]] = None, result_path: Optional[str] = None) -> int:
        return run_step(args_class, run, argv, result_path=result_path)
    main.__doc__ = f"Run the {args_class.STEP} step; returns the exit code."
    return main
