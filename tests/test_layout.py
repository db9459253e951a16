"""The package layout: one package per stage, imports that never run in a circle or back
up the layers, config checks that import no stage computation, rule files that match
the packages one to one, thin workflow scripts, and a smoke run whose every number is
the one it was before the move to this layout (tests/fixtures/smoke_hashes.json)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "src" / "rsdyn"

#: every package of rsdyn and the packages it may import (besides itself): the layers,
#: from the ground up. ``config`` (top level) collects the stages' settings modules.
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "capture": {"core", "models"},
    "units": {"core", "models"},
    "population": {"core", "units"},
    "cae": {"core", "models"},
    "geometry": {"core", "models", "capture"},
    "jacobian": {"core", "models"},
    "report": {"core", "models", "capture", "units", "population", "cae", "geometry", "jacobian"},
    "config": {"core", "models", "capture", "units", "population", "cae", "geometry", "jacobian", "report"},
    "verify": {"core"},
}
STAGES = ("models", "capture", "units", "population", "cae", "geometry", "jacobian", "report")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The rsdyn modules ``path`` imports anywhere (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.startswith("rsdyn")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rsdyn") and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return {name for name in out if name in known}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_modules(path, set(found)) - {name} for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_under_src():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rsdyn"


def test_imports_never_run_back_up_the_layers():
    assert set(ALLOWED) | {"rsdyn"} == {layer(name) for name in modules()}, "a package without a place in ALLOWED"
    wrong = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        for target in targets
        if layer(target) != layer(name) and layer(target) not in ALLOWED.get(layer(name), set())
    ]
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_a_module():
    """``from rsdyn.x import _name`` would tie a module to another's internals."""
    crossing = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rsdyn"):
                crossing += [f"{name}: {node.module}.{alias.name}" for alias in node.names if alias.name.startswith("_")]
    assert not crossing, "\n".join(crossing)


def test_config_validation_imports_no_stage_computation_and_no_torch():
    """Checking the default and the paper configs loads only rsdyn.config, the core and
    every stage's settings module (and the model table): no torch, no stage compute code."""
    script = textwrap.dedent(
        f"""
        import json, sys, yaml
        sys.path.insert(0, {str(REPO / "src")!r})
        from rsdyn.config import resolve_runs
        for name in ("config.yaml", "paper.yaml", "paper-random.yaml", "smoke.yaml"):
            config = yaml.safe_load(open({str(REPO / "config")!r} + "/" + name))
            resolve_runs(config)
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(("rsdyn", "torch")))))
        """
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=REPO).stdout)
    assert not [m for m in loaded if m.startswith("torch")]
    allowed = {"rsdyn", "rsdyn.config", "rsdyn.models.registry", "rsdyn.models.adapters"}
    unexpected = [
        m for m in loaded
        if m not in allowed and not m.startswith("rsdyn.core.") and not m.endswith(".settings") and m.count(".") > 1
    ]
    assert not unexpected, f"config validation imported stage modules: {unexpected}"
    assert {f"rsdyn.{stage}.settings" for stage in STAGES} <= set(loaded)


def test_every_stage_owns_its_sections_and_the_config_collects_them():
    from rsdyn import config
    from rsdyn.core.schema import load_schema

    schema_sections = set(load_schema()["definitions"]) - {"model", "run"}
    owned = [section for stage in config.STAGES for section in stage.SECTIONS]
    assert sorted(owned) == sorted(schema_sections), "each schema section belongs to exactly one stage"
    assert set(config.SECTIONS) == schema_sections


def test_rule_files_match_the_packages_one_to_one():
    rules = {path.stem for path in (REPO / "workflow" / "rules").glob("*.smk")}
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert rules == (packages - {"core"}) | {"common"}
    snakefile = (REPO / "Snakefile").read_text()
    for rule_file in rules:
        assert f'include: "workflow/rules/{rule_file}.smk"' in snakefile


def test_workflow_scripts_are_thin():
    """A workflow script sets up its job and calls one rsdyn entry, nothing else of rsdyn."""
    heavy = {}
    for script in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        names = [
            alias.name
            for node in ast.walk(ast.parse(script.read_text()))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rsdyn")
            for alias in node.names
        ]
        entries = [name for name in names if name != "setup_job"]
        if len(entries) != 1:
            heavy[script.name] = entries
    assert not heavy, f"scripts that call more than one rsdyn function: {heavy}"


def test_workflow_scripts_run_only_under_a_main_guard():
    """Snakemake runs a script as ``python <copy>``: a process it spawns (the CAE's
    spawn-context DataLoader) imports that file again as ``__mp_main__``, and an
    unguarded script would run its rule again inside the worker (the job hangs). Each
    script is its docstring and one ``if __name__ == "__main__":`` block."""
    unguarded = []
    for script in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        body = ast.parse(script.read_text()).body
        docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        rest = body[1:] if docstring else body
        guard = (len(rest) == 1 and isinstance(rest[0], ast.If) and isinstance(rest[0].test, ast.Compare)
                 and ast.unparse(rest[0].test) in ("__name__ == '__main__'", '__name__ == "__main__"') and not rest[0].orelse)
        if not guard:
            unguarded.append(script.name)
    assert not unguarded, f"workflow scripts with code outside the main guard: {unguarded}"


@pytest.mark.workflow
def test_smoke_run_numbers_are_identical_to_the_golden_hashes(smoke_run):
    """Every array, attribute and table of the smoke run has the SHA-256 recorded in
    tests/fixtures/smoke_hashes.json (written before the stage-package move). Bit
    identity needs the same instruction set and numerical libraries: on another
    platform the test says so and is skipped."""
    from result_hashes import platform_signature, result_hashes

    golden = json.loads((REPO / "tests" / "fixtures" / "smoke_hashes.json").read_text())
    if golden["platform"] != platform_signature():
        pytest.skip(f"golden hashes were made on {golden['platform']}, this is {platform_signature()}")
    current = result_hashes(smoke_run / "results" / "smoke")
    missing = sorted(set(golden["hashes"]) - set(current))
    extra = sorted(set(current) - set(golden["hashes"]))
    changed = sorted(key for key in set(golden["hashes"]) & set(current) if golden["hashes"][key] != current[key])
    assert not (missing or extra or changed), (
        f"missing {missing[:10]}, new {extra[:10]}, changed {changed[:20]}; if the change is meant, regenerate "
        "the fixture (tests/result_hashes.py) and say why in the commit"
    )
