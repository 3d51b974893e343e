"""The Dockerfiles (images/): hadolint, and static checks that hold without a Docker engine —
multi-stage with pinned bases, non-root runtime, no compilers in the runtime stage, every
file they copy and every module they run exists in the project, and the images carry what
the operator runs in them (`python -m edgetune_jobs.<step>`, `python -m edgetune_operator`).
"""
from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "trainer", "trainer-cpu", "jetson", "cpu-edge")
sys.path.insert(0, str(ROOT / "jobs"))

from edgetune_contract import names as contract  # noqa: E402
from support import tool  # noqa: E402

# The steps' nodes (DESIGN.md, "Where things run"): which image runs which step.
GPU_STEPS = {"finetune", "export"}
EDGE_STEPS = {"build-engine", "benchmark", "verify", "sweep"}
BUILD_TOOLS = {"build-essential", "gcc", "g++", "make", "cmake", "git", "python3-dev", "python3.11-dev",
               "ninja-build", "cuda-toolkit", "cuda-nvcc"}


class Stage:
    def __init__(self, base: str, name: str | None):
        self.base, self.name = base, name
        self.instructions: list[tuple[str, str]] = []

    def of(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        op, _, rest = line.strip().partition(" ")
        op = op.upper()
        rest = rest.strip()
        if op == "FROM":
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif op == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k] = v.strip('"')
        elif stages:
            stages[-1].instructions.append((op, rest))
    return args, stages


def dockerfile(name: str) -> Path:
    return ROOT / "images" / name / "Dockerfile"


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint(name):
    proc = subprocess.run([tool("hadolint"), "--config", str(ROOT / "images" / "hadolint.yaml"), str(dockerfile(name))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_multi_stage_pinned_bases(name):
    _, stages = parse(dockerfile(name))
    assert len(stages) >= 2, "build and runtime stages"
    names = {s.name for s in stages if s.name}
    for s in stages:
        if s.base in names:
            continue
        assert "$" not in s.base, f"unresolved base {s.base}"
        repo, _, tag = s.base.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"base not pinned: {s.base}"


@pytest.mark.parametrize("name", IMAGES)
def test_runtime_stage_non_root_without_build_tools(name):
    _, stages = parse(dockerfile(name))
    runtime = stages[-1]
    (user,) = runtime.of("USER")
    uid = user.split(":")[0]
    assert uid not in ("root", "0") and uid.isdigit(), f"runtime USER {user}"
    installed = set()
    for run in runtime.of("RUN"):
        for m in re.finditer(r"apt-get install ([^&;|]+)", run):
            installed |= {w for w in m.group(1).split() if not w.startswith("-")}
        assert "pip wheel" not in run and "setup.py" not in run and "nvcc" not in run, run
    assert not installed & BUILD_TOOLS, f"build tools in the runtime stage: {installed & BUILD_TOOLS}"
    # the build stage is where compilers go
    assert any("build-essential" in r for s in stages[:-1] for r in s.of("RUN")) or name in ("operator", "cpu-edge")  # wheels only


@pytest.mark.parametrize("name", IMAGES)
def test_copied_files_exist(name):
    _, stages = parse(dockerfile(name))
    for s in stages:
        for copy in s.of("COPY"):
            words = [w for w in shlex.split(copy) if not w.startswith("--")]
            if "--from=" in copy:
                continue
            for src in words[:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist in the repository"
            ignore = dockerfile(name).with_name("Dockerfile.dockerignore")
            if ignore.exists():
                allowed = [l[1:] for l in ignore.read_text().splitlines() if l.startswith("!")]
                for src in words[:-1]:
                    src = src.rstrip("/")
                    assert any(a == src or a.startswith(src + "/") or src.startswith(a.rstrip("*").rstrip("/"))
                               for a in allowed), f"{name}: {src} is excluded by {ignore.name}"


@pytest.mark.parametrize("name", ("trainer", "trainer-cpu"))
def test_the_ml_stack_layer_does_not_change_with_the_code(name):
    """The trainers' runtime stage copies the ML stack's virtualenv (gigabytes) before any of
    the project's files: a code change then adds a small layer and the big one stays shared
    (by the local cluster's image store, each node's containerd, a registry). With the
    project installed in the build stage, every change made a new multi-gigabyte layer."""
    _, stages = parse(dockerfile(name))
    runtime = stages[-1]
    ops = [(op, arg) for op, arg in runtime.instructions if op in ("COPY", "RUN")]
    venv = next(i for i, (op, arg) in enumerate(ops) if op == "COPY" and "--from=build" in arg and "/opt/venv" in arg)
    project = [i for i, (op, arg) in enumerate(ops) if op == "COPY" and re.search(r"\b(jobs|contract)/", arg)]
    assert project and min(project) > venv, ops
    installs = [i for i, (op, arg) in enumerate(ops) if op == "RUN" and re.search(r"pip install [^&]*\s\.(\s|$)", arg)]
    assert installs and min(installs) > max(project), ops
    for s in stages[:-1]:  # the build stage holds only the pinned stack
        assert not any(re.search(r"\b(jobs|contract)/", arg) for arg in s.of("COPY")), s.of("COPY")


def _python_modules(text: str) -> list[str]:
    return re.findall(r"\bpython3?(?:\.\d+)?\"?,?\s*\"?-m\"?,?\s*\"?([A-Za-z_][\w.]*)", text)


def _module_exists(module: str) -> bool:
    top = module.split(".")[0]
    for root in ("contract", "operator", "jobs", "localcluster"):
        base = ROOT / root / Path(*module.split("."))
        if base.with_suffix(".py").exists() or (base / "__init__.py").exists() or (base / "__main__.py").exists():
            return True
        if (ROOT / root / top).exists():
            return False
    return module in {"pip", "venv", "compileall", "edgetune_jobs"}


@pytest.mark.parametrize("name", IMAGES)
def test_commands_exist_in_the_project(name):
    _, stages = parse(dockerfile(name))
    text = "\n".join(a for s in stages for op, a in s.instructions if op in ("RUN", "CMD", "ENTRYPOINT"))
    mods = _python_modules(text)
    assert mods, "the image runs no python module?"
    for m in mods:
        assert _module_exists(m), f"{name}: `python -m {m}` is not in the project"
    for m in re.findall(r"import ([\w., ]+)", text):
        for mod in (x.strip() for x in m.split(",")):
            if mod.startswith("edgetune_"):
                assert _module_exists(mod), f"{name}: imports {mod}, which is not in the project"
    for req in re.findall(r"-r\s+(\S+\.txt)", text):
        if req.startswith("/"):
            continue
        assert (ROOT / req).exists(), f"{name}: {req} missing"


def test_images_run_what_the_operator_runs():
    """The operator runs `<python> -m edgetune_jobs.steps.<step>` in the trainer/jetson images and
    the chart runs `python -m edgetune_operator` in the operator image: the modules exist, and
    each image has the packages in it."""
    for step in contract.STEPS.values():
        assert _module_exists(step.module), f"step {step.name}: {step.module} is not in jobs/"
    assert contract.step_command("finetune")[0] == "python"
    # operator image: the operator and the contract, nothing of the job steps or the local cluster
    op = dockerfile("operator").read_text()
    assert "COPY operator/ operator/" in op and "COPY contract/ contract/" in op
    assert "pip install --no-compile --no-deps ." in op
    copies = [ln for ln in op.splitlines() if ln.startswith("COPY")]
    assert not any("jobs/" in ln or "localcluster" in ln for ln in copies), copies
    _, stages = parse(dockerfile("operator"))
    assert stages[-1].of("CMD") == ['["python", "-m", "edgetune_operator"]']
    chart = yaml.safe_load((ROOT / "charts" / "edgetune" / "templates" / "deployment.yaml").read_text()
                           .split("command:")[1].splitlines()[0])
    assert chart == ["python", "-m", "edgetune_operator"]
    # trainer: the whole project + ML stack; jetson: the jobs package on PYTHONPATH, `python` exists
    tr = dockerfile("trainer").read_text()
    assert "requirements/ml.txt" in tr and "COPY jobs/ jobs/" in tr and "COPY contract/ contract/" in tr
    assert "pip install --no-deps ." in tr
    je = dockerfile("jetson").read_text()
    assert "COPY jobs/edgetune_jobs/ /opt/edgetune/edgetune_jobs/" in je and "PYTHONPATH=/opt/edgetune" in je
    assert "COPY contract/edgetune_contract/ /opt/edgetune/edgetune_contract/" in je
    assert "python-is-python3" in je
    # cpu-edge: the device-side steps with onnxruntime and openvino, the venv's python on PATH
    ce = dockerfile("cpu-edge").read_text()
    assert "COPY jobs/edgetune_jobs/ /opt/edgetune/edgetune_jobs/" in ce and "PYTHONPATH=/opt/edgetune" in ce
    assert "requirements/cpu-edge.txt" in ce and "PATH=/opt/venv/bin" in ce
    ml = dict(line.split("==") for line in (ROOT / "requirements" / "ml.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#"))
    for line in (ROOT / "requirements" / "cpu-edge.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            if name in ml:
                assert ml[name] == version, f"cpu-edge pins {name}=={version}, ml.txt {ml[name]}"


def test_pins_match_the_tested_stack():
    """The trainer installs the exact pins of requirements/ml.txt; mmcv's version in the
    Dockerfile is the one scripts/install-ml.sh builds."""
    ml = (ROOT / "requirements" / "ml.txt").read_text()
    for pkg in ("torch", "mmengine", "mmdet", "mmdeploy", "onnxruntime"):
        assert re.search(rf"^{pkg}==\S+", ml, re.M), pkg
    mmcv = re.search(r"MMCV_VERSION=(\S+)", (ROOT / "scripts" / "install-ml.sh").read_text()).group(1)
    assert f"ARG MMCV_VERSION={mmcv}" in dockerfile("trainer").read_text()
    for line in (ROOT / "images" / "jetson" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", line), f"jetson requirement not pinned: {line}"


_GENERIC = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (strings at run time under PEP 563)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, ast.arg) and node.annotation is not None:
            anns.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            anns.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        for ann in anns:
            out.update(id(n) for n in ast.walk(ann))
    return out


def _py38_runtime_problems(tree: ast.AST) -> list[str]:
    """Expressions evaluated at run time that Python 3.8 cannot: list[int]-style generics
    and `X | None` unions outside annotations."""
    in_ann = _annotation_nodes(tree)
    problems = []
    for node in ast.walk(tree):
        if id(node) in in_ann:
            continue
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in _GENERIC:
            problems.append(f"line {node.lineno}: {node.value.id}[...] at run time")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and any(
                isinstance(x, ast.Constant) and x.value is None for x in (node.left, node.right)):
            problems.append(f"line {node.lineno}: `| None` at run time")
    return problems


def _module_file(module: str) -> Path | None:
    for root in ("contract", "jobs"):
        base = ROOT / root / Path(*module.split("."))
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.exists():
                return path
    return None


def test_device_side_steps_run_on_python_38():
    """The Jetson image runs build-engine/benchmark/verify with JetPack 5's Python 3.8 (the
    only Python TensorRT 8.5's bindings exist for): those modules and everything they import
    from edgetune_jobs and edgetune_contract (packages' __init__ included) must parse as
    Python 3.8 and evaluate nothing at import time that 3.8 lacks."""
    todo = [contract.STEPS[s].module for s in sorted(EDGE_STEPS)]
    seen: set[str] = set()
    while todo:
        mod = todo.pop()
        parts = mod.split(".")
        for i in range(1, len(parts)):  # the packages on the way are imported too
            todo.append(".".join(parts[:i]))
        if mod in seen:
            continue
        seen.add(mod)
        path = _module_file(mod)
        assert path is not None, f"{mod} (imported by a device-side step) does not exist"
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))
        assert not _py38_runtime_problems(tree), (mod, _py38_runtime_problems(tree))
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(("edgetune_jobs", "edgetune_contract")):
                continue
            todo.append(target)
            for alias in node.names:  # `from pkg import module`
                if _module_file(f"{target}.{alias.name}") is not None:
                    todo.append(f"{target}.{alias.name}")
    assert {"edgetune_contract.results", "edgetune_jobs.cli", "edgetune_jobs.inference.detectors",
            "edgetune_jobs.data.coco_eval"} <= seen, sorted(seen)
    assert not any(m.startswith(("edgetune_operator", "edgetune_jobs.training")) for m in seen)


def test_make_images_tags_are_the_charts_images():
    out = subprocess.run(["make", "-s", "images"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    values = yaml.safe_load((ROOT / "charts" / "edgetune" / "values.yaml").read_text())
    app = yaml.safe_load((ROOT / "charts" / "edgetune" / "Chart.yaml").read_text())["appVersion"]
    repos = {"operator": values["image"]["repository"], "trainer": values["jobImages"]["trainer"]["repository"],
             "jetson": values["jobImages"]["jetson"]["repository"]}
    for name, repo in repos.items():
        assert f"-f images/{name}/Dockerfile -t {repo}:{app} ." in out.stdout, (name, out.stdout)
