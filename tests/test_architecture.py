"""The package floors: every package imports only packages on a lower floor, and no two modules import each other.

Read from the source with `ast` (every ``import`` and ``from ... import``, at the top of a module or
inside a function), so a lazy import counts as much as an eager one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: lowest first; a package may import its own floor's modules only within itself
FLOORS: dict[str, int] = {
    "core": 0,
    "fusion": 1,
    "convert": 2,
    "eval": 2,
    "adapters": 3,
    "ensemble": 3,
    "pipeline": 4,
    "infer": 5,
}
#: a training framework, imported only inside one adapter module at a time
FRAMEWORKS = (
    "torch", "torchvision", "ultralytics", "detectron2", "mmdet", "mmcv", "mmengine", "pytorch_grad_cam", "ray",
)  # fmt: skip
#: optional or heavy packages and the one module each may be imported in
CONFINED = {"ray": "pipeline.ray_executor", "pytorch_grad_cam": "adapters.gate.cam"}


def _modules() -> dict[str, Path]:
    """``package.module`` → file, for every module of every package."""
    out = {}
    for pkg in FLOORS:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """Absolute names of the modules ``path`` imports, with their line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names]
    return out


MODULES = _modules()


def test_every_package_is_on_a_floor():
    top = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()} - {"tests"}
    assert top == set(FLOORS), "a new package needs a floor in tests/test_architecture.py"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_look_down(module):
    pkg = module.split(".")[0]
    bad = []
    for target, line in _imports(MODULES[module], module):
        other = target.split(".")[0]
        if other in FLOORS and other != pkg and FLOORS[other] >= FLOORS[pkg]:
            bad.append(f"line {line}: {target} (floor {FLOORS[other]})")
        if other in FRAMEWORKS and pkg in ("core", "fusion", "convert", "ensemble", "eval"):
            bad.append(f"line {line}: training framework {target}")
    assert not bad, f"{module} (floor {FLOORS[pkg]}) imports upward or sideways: {bad}"


@pytest.mark.parametrize("package", sorted(CONFINED))
def test_optional_packages_are_imported_in_one_module_only(package):
    where = {m for m, path in MODULES.items() for t, _ in _imports(path, m) if t.split(".")[0] == package}
    assert where <= {CONFINED[package]}, f"{package} is imported by {sorted(where - {CONFINED[package]})}"
    assert where, f"{CONFINED[package]} no longer imports {package}: update CONFINED"


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps: set[str] = set()
        graph[module] = deps
        if path.name == "__init__.py":
            continue  # a package's __init__ re-exporting its own modules is not a cycle with them
        for target, _ in _imports(path, module):
            # the longest known module name that ``target`` starts with
            parts = target.split(".")
            for k in range(len(parts), 0, -1):
                name = ".".join(parts[:k])
                if name in MODULES and name != module:
                    deps.add(name)
                    break

    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, f"modules importing each other: {cycles}"


def test_the_check_can_fail(tmp_path):
    """The checker sees an upward import inside a function (a lazy one) and resolves relative imports."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from ensemble.run import run\n    from .boxes import box_iou\n")
    found = dict(_imports(src, "core.x"))
    assert "ensemble.run" in found and "core.boxes" in found
