"""The code's layout keeps its promises: small modules, the kinds and steps written once, the
accuracy gate decided in one place, the operator free of job-step code."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from edgetune_contract import names

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "contract" / "edgetune_contract", ROOT / "operator" / "edgetune_operator",
            ROOT / "jobs" / "edgetune_jobs"]
MAX_LINES = 400


def sources(*roots: Path):
    for root in roots:
        yield from sorted(root.rglob("*.py"))


@pytest.mark.parametrize("path", list(sources(*PACKAGES)), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def _string_tuples(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and \
                all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node.lineno, {e.value for e in node.elts}


def test_the_kinds_and_steps_are_written_once():
    """Outside edgetune_contract.names no code lists all three kinds, or all five steps."""
    kinds, steps = set(names.KINDS), set(names.STEPS)
    roots = PACKAGES + [ROOT / "tests" / "cluster", ROOT / "deploy", ROOT / "scripts", ROOT / "benchmarks"]
    found = []
    for path in sources(*roots):
        if path == ROOT / "contract" / "edgetune_contract" / "names.py":
            continue
        for line, values in _string_tuples(path):
            if kinds <= values or steps <= values:
                found.append(f"{path.relative_to(ROOT)}:{line}")
    assert not found, f"kinds or steps listed again (import them from edgetune_contract.names): {found}"


def test_the_accuracy_gate_has_one_owner():
    """The verify step decides it (edgetune_contract.results.accuracy_gate), and the sweep step
    for its table's budget; the operator only records the verdicts: no comparison against
    maxMapDrop in the operator."""
    calls = [p.relative_to(ROOT).as_posix() for p in sources(*PACKAGES) if "accuracy_gate(" in p.read_text()
             and p.name != "results.py"]
    assert calls == ["jobs/edgetune_jobs/steps/sweep.py", "jobs/edgetune_jobs/steps/verify.py"]
    for path in sources(ROOT / "operator" / "edgetune_operator"):
        text = path.read_text()
        assert not re.search(r"(map_?drop|mapDrop)[^\n]*[<>]=?[^\n]*(max_?map_?drop|maxMapDrop|limit)", text, re.I), path


def test_the_operator_imports_no_job_step_code():
    for path in sources(ROOT / "operator" / "edgetune_operator", ROOT / "contract" / "edgetune_contract"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(m.startswith(("edgetune_jobs", "edgetune_localcluster")) for m in mods), path


def test_the_contract_needs_only_the_standard_library():
    import sys

    allowed = set(sys.stdlib_module_names) | {"edgetune_contract"}
    for path in sources(ROOT / "contract" / "edgetune_contract"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module]
            else:
                continue
            assert all(m.split(".")[0] in allowed for m in mods), (path, mods)


def test_no_two_modules_share_a_name_across_operator_and_jobs():
    special = {"__init__", "__main__"}
    ours = {p.stem for p in sources(ROOT / "operator" / "edgetune_operator") if p.stem not in special}
    theirs = {p.stem for p in sources(ROOT / "jobs" / "edgetune_jobs") if p.stem not in special}
    assert not ours & theirs, ours & theirs


def test_test_modules_have_unique_basenames():
    """`make test` collects every folder at once with pytest's default (prepend) import mode,
    where two test files of one basename stop the whole run at collection."""
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
