"""Typed command lines: a dataclass describes a step's arguments once; its argparse parser,
to_argv() (what the operator renders into the Job) and from_argv() (what the step parses)
are all derived from it, so the two sides cannot disagree on a flag.

A field's flag is `--` + its name with '_' -> '-', unless `flag=` says otherwise. Field
types come from the annotation text (int, float, str, bool, each optionally `Optional[...]`
or `... | None`), read as text so that this also runs on Python 3.8 (the Jetson image).
Booleans are switches: `flag` sets True; with `negate=True` the flag sets False (e.g.
`--no-eval-base` for a field `eval_base` that defaults to True).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar

T = TypeVar("T", bound="StepArgs")
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


class ArgumentError(ValueError):
    """A command line the step's parser refuses (the step reports it as InvalidInput)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise ArgumentError(f"{self.prog}: {message}")


def arg(default: Any = None, *, help: str = "", choices: Optional[Sequence[Any]] = None,
        flag: Optional[str] = None, negate: bool = False, required: bool = False, artifact: bool = False,
        artifact_keys: Sequence[str] = ()) -> Any:
    """A dataclass field that is a command-line option. artifact=True: an input file or folder
    that may be an s3:// URI, which the step downloads before it runs (edgetune_jobs.artifacts).
    artifact_keys: the field is a JSON list of objects whose values at these keys are such inputs."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "flag": flag,
            "negate": negate, "required": required, "artifact": artifact, "artifact_keys": tuple(artifact_keys)}
    return dataclasses.field(default=default, metadata=meta)


def _base_type(annotation: Any) -> type:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace(" ", "")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional["):-1]
    text = text.replace("|None", "").replace("None|", "")
    if text not in _TYPES:
        raise TypeError(f"unsupported argument type {annotation!r}")
    return _TYPES[text]


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


@dataclasses.dataclass
class StepArgs:
    """Base of every step's arguments. Subclasses set STEP and declare fields with arg()."""

    STEP = ""  # the step name (names.STEPS); a plain class attribute, not a field

    out: str = arg(required=True, help="the step's output folder")

    def __post_init__(self) -> None:
        missing = [f.name for f in dataclasses.fields(self) if f.metadata.get("required") and
                   getattr(self, f.name) in (None, "")]
        if missing:
            raise ArgumentError(f"{self.STEP}: missing required argument(s): "
                                + ", ".join(self.flag_of(n) for n in missing))
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            kind = _base_type(f.type)
            if value is not None and not _is(value, kind):
                raise ArgumentError(f"{self.STEP}: {self.flag_of(f.name)} must be {kind.__name__}, got {value!r}")
            if choices and value is not None and value not in choices:
                raise ArgumentError(f"{self.STEP}: {self.flag_of(f.name)} must be one of "
                                    f"{', '.join(map(str, choices))}, got {value!r}")

    @classmethod
    def artifact_fields(cls) -> List[str]:
        """The fields that name input artifacts (files or folders; maybe s3:// URIs)."""
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("artifact")]

    @classmethod
    def artifact_list_fields(cls) -> Dict[str, Sequence[str]]:
        """JSON-list fields whose entries name input artifacts: {field: the keys that do}."""
        return {f.name: f.metadata["artifact_keys"] for f in dataclasses.fields(cls)
                if f.metadata.get("artifact_keys")}

    @classmethod
    def flag_of(cls, field_name: str) -> str:
        f = {f.name: f for f in dataclasses.fields(cls)}[field_name]
        return f.metadata.get("flag") or "--" + f.name.replace("_", "-")

    @classmethod
    def parser(cls, prog: Optional[str] = None, description: str = "") -> argparse.ArgumentParser:
        """The step's one argparse parser (errors raise ArgumentError instead of exiting)."""
        p = _Parser(prog=prog or f"edgetune step {cls.STEP}", description=description)
        for f in dataclasses.fields(cls):
            meta, flag = f.metadata, cls.flag_of(f.name)
            kind = _base_type(f.type)
            if kind is bool:
                p.add_argument(flag, dest=f.name, action="store_false" if meta.get("negate") else "store_true",
                               default=f.default, help=meta.get("help"))
                continue
            p.add_argument(flag, dest=f.name, type=kind, default=f.default, help=meta.get("help"),
                           choices=meta.get("choices"), required=bool(meta.get("required")))
        return p

    @classmethod
    def from_argv(cls: Type[T], argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> T:
        """Parse a command line (default: sys.argv[1:]) into the typed arguments."""
        ns = cls.parser(prog).parse_args(None if argv is None else list(argv))
        return cls(**vars(ns))

    def to_argv(self) -> List[str]:
        """The command line: required arguments always, the others where they differ from
        the step's default (so a Job shows what was asked for, and from_argv gives it back)."""
        out: List[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if value is None or (value == f.default and not meta.get("required")):
                continue
            flag = self.flag_of(f.name)
            if _base_type(f.type) is bool:
                if bool(value) != bool(f.default):
                    out.append(flag)
                continue
            out += [flag, repr(float(value)) if isinstance(value, float) else str(value)]
        return out

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
