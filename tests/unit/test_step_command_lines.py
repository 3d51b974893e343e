"""The operator and the steps agree on every command line (no ML stack needed).

For every example resource in examples/ and the spec variants below, the Job of each of its
steps is rendered as the operator renders it, and the container's arguments are parsed back
by the step's own parser (edgetune_jobs.cli.parse, the code path of `python -m
edgetune_jobs.steps.<step>`) into the very arguments the planner built. A flag the operator
writes and the step does not know, or a value that changes on the way, fails here. A second
test reads each step's code and checks that every argument it uses exists in its class.
"""
from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest
import yaml

from edgetune_contract import names
from edgetune_contract.args import STEP_ARGS, SweepArgs
from edgetune_jobs.cli import StepError, parse
from edgetune_operator import jobspec, kinds
from edgetune_operator.kinds import edgebenchmark, finetunejob, modelconversion
from edgetune_operator.kinds.common import Context
from edgetune_operator.settings import from_env

ROOT = Path(__file__).resolve().parents[2]
S = from_env({})
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

VARIANTS = {
    "FinetuneJob": [
        {"dataset": {"generate": {}}},
        {"dataset": {"generate": {"images": 40, "seed": 3}}, "training": {"epochs": 7, "batchSize": 4,
                                                                          "imageSize": 320, "learningRate": 0.01,
                                                                          "seed": 5, "workers": 0,
                                                                          "valInterval": 1, "device": "cpu"}},
        {"dataset": {"url": "https://h/balloon.zip", "format": "via", "valFraction": 0.3},
         "model": {"config": "rtmdet_s_8xb32-300e_coco", "checkpoint": "https://h/rtmdet_s.pth"},
         "training": {"evalBase": False, "device": "cuda"}},
        {"dataset": {"path": "datasets/coco-like", "format": "coco"}, "model": {"checkpoint": "models/base.pth"}},
    ],
    "ModelConversion": [
        {"source": {"finetuneJob": "ft"}},
        {"source": {"finetuneJob": "ft"}, "backend": "onnxruntime", "precision": "fp32", "dynamic": True,
         "imageSize": 320, "postprocess": {"scoreThreshold": 0.3, "iouThreshold": 0.5, "maxDetections": 50},
         "export": {"device": "cpu"}, "verify": {"maxMapDrop": 0.005}},
        {"source": {"model": {"checkpoint": "m/x.pth", "config": "m/x.py", "valDataset": "m/data"}},
         "precision": "int8", "calibration": {"images": "calib"}, "build": {"workspaceMiB": 4096}},
        {"source": {"model": {"checkpoint": "m/x.pth", "config": "m/x.py"}}, "verify": {"enabled": False}},
        {"source": {"finetuneJob": "ft"}, "backend": "openvino", "precision": "bf16"},
        {"source": {"finetuneJob": "ft"}, "backend": "openvino", "precision": "int8",
         "calibration": {"images": "calib", "method": "percentile", "maxImages": 64}},
        {"source": {"finetuneJob": "ft"}, "backend": "onnxruntime", "precision": "int8",
         "calibration": {"images": "calib", "method": "entropy"}},
    ],
    "EdgeBenchmark": [
        {"modelConversion": "mc"},
        {"modelConversion": "mc", "warmup": 0, "iterations": 17, "durationSeconds": 2.5, "images": "frames",
         "threads": 3, "schedule": "@hourly"},
        {"modelConversions": ["mc"], "threads": 2, "iterations": 50, "maxMapDrop": 0.01},
        {"selector": {"matchLabels": {"sweep": "balloon"}}, "images": "frames"},
    ],
}


def resources():
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == names.API_VERSION:
                yield f"{path.relative_to(ROOT)}:{doc['metadata']['name']}", doc
    for kind, specs in VARIANTS.items():
        for i, spec in enumerate(specs):
            yield f"{kind}-variant-{i}", {"apiVersion": names.API_VERSION, "kind": kind,
                                         "metadata": {"name": f"v{i}", "namespace": "demo"}, "spec": spec}


def step_args(body):
    """(resource, [(the typed arguments the planner builds, run number)]) for every step of
    the resource, with the upstream artifacts a successful run would have recorded."""
    body = {**body, "metadata": {"uid": "u", "generation": 1, "namespace": "demo", **body["metadata"]}}
    c = Context(body, [], [], S, T0)
    if body["kind"] == "FinetuneJob":
        return body, [(finetunejob.finetune_args(c), 1)]
    if body["kind"] == "ModelConversion":
        ok, _, _, resolved = modelconversion.resolve_source(c, finetunejob_done(c.store))
        assert ok
        resolved.pop("model")
        c.status["source"] = resolved
        uri = lambda step, f: c.store.artifact_uri("demo", "ModelConversion", c.name, step, f)  # noqa: E731
        c.status["artifacts"] = {"onnx": uri("export", "end2end.onnx"), "meta": uri("export", "pipeline.json"),
                                 "engine": uri("build-engine", "end2end.engine")}
        steps = names.KIND_STEPS["ModelConversion"] if c.spec["verify"]["enabled"] else ("export", "build-engine")
        return body, [(modelconversion.step_args(c, step), 1) for step in steps]
    if kinds.is_selector(body):
        conv = conversion_done(c.store)
        conv["metadata"]["namespace"] = body["metadata"]["namespace"]
        conv["metadata"]["labels"] = dict((body["spec"].get("selector") or {}).get("matchLabels") or {})
        (manifest,) = kinds.plan(body, [], [], S, T0, related=[conv]).create
        return body, [(SweepArgs.from_argv(manifest["spec"]["template"]["spec"]["containers"][0]["args"]), 1)]
    ok, _, _, model = edgebenchmark.model_of(c, conversion_done(c.store))
    assert ok
    return body, [(edgebenchmark.benchmark_args(c, model["inputs"], run), run) for run in (1, 2)]


def finetunejob_done(store):
    """A succeeded FinetuneJob "ft" whose artifacts are in `store`."""
    uri = lambda f: store.artifact_uri("demo", "FinetuneJob", "ft", "finetune", f)  # noqa: E731
    return {"kind": "FinetuneJob", "metadata": {"name": "ft", "namespace": "demo"}, "spec": {},
            "status": {"phase": "Succeeded", "artifacts": {"checkpoint": uri("best.pth"), "config": uri("config.py"),
                                                           "dataset": uri("data")}}}


def conversion_done(store):
    """A succeeded ModelConversion "mc" (onnxruntime) whose artifacts are in `store`."""
    uri = lambda step, f: store.artifact_uri("demo", "ModelConversion", "mc", step, f)  # noqa: E731
    return {"kind": "ModelConversion", "metadata": {"name": "mc", "namespace": "demo"},
            "spec": {"source": {"finetuneJob": "ft"}, "backend": "onnxruntime", "precision": "fp32"},
            "status": {"phase": "Succeeded",
                       "source": {"valDataset": store.artifact_uri("demo", "FinetuneJob", "ft", "finetune", "data")},
                       "artifacts": {"model": uri("build-engine", "end2end.onnx"), "meta": uri("export", "pipeline.json")}}}


@pytest.mark.parametrize("name, body", list(resources()), ids=[n for n, _ in resources()])
def test_the_step_parses_the_command_line_the_operator_renders(name, body):
    body, all_args = step_args(body)
    for args, run in all_args:
        assert not isinstance(args, str), args  # every input was there
        job = jobspec.build_job(body, args, S, run=run)
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", names.step(args.STEP).module]
        parsed = parse(STEP_ARGS[args.STEP], container["args"])
        assert parsed == args, (name, args.STEP)
        assert {e["name"]: e.get("value") for e in container["env"]}[names.ENV_ARTIFACT_DIR] == parsed.out


def test_a_flag_the_step_does_not_know_fails_as_invalid_input():
    _, ((args, _),) = step_args(next(b for n, b in resources() if b["kind"] == "FinetuneJob"))
    with pytest.raises(StepError) as err:
        parse(STEP_ARGS["finetune"], args.to_argv() + ["--epochz", "3"])
    assert err.value.reason == "InvalidInput" and "--epochz" in err.value.message


def _argument_uses(path: Path) -> list[tuple[str, str, int]]:
    """(arguments class, attribute, line) for every `x.attr` where x is a parameter annotated
    with a step's arguments class."""
    classes = {cls.__name__ for cls in STEP_ARGS.values()}
    uses = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        typed = {a.arg: a.annotation.id for a in fn.args.args
                 if isinstance(a.annotation, ast.Name) and a.annotation.id in classes}
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in typed:
                uses.append((typed[node.value.id], node.attr, node.lineno))
    return uses


@pytest.mark.parametrize("step", list(names.STEPS))
def test_each_step_uses_only_arguments_its_class_has(step):
    cls = STEP_ARGS[step]
    path = ROOT / "jobs" / Path(*names.step(step).module.split(".")).with_suffix(".py")
    uses = _argument_uses(path)
    assert any(c == cls.__name__ for c, _, _ in uses), f"{path.name} takes no {cls.__name__}"
    fields = set(cls.__dataclass_fields__)
    unknown = [(attr, line) for c, attr, line in uses if c == cls.__name__ and attr not in fields]
    assert not unknown, f"{path.name} reads arguments {cls.__name__} does not have: {unknown}"
