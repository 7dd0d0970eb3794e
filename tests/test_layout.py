"""The package layout's rules, read from the source: subpackages import one way, the library
never imports benchmarks/ (nor tests/), and compressors/ never imports ddp_hooks/."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# what each part of the library may import from the project (its own modules always)
ALLOWED = {
    "compressors.kernels": set(),
    "compressors.core": {"compressors.kernels"},
    "compressors.codecs": {"compressors.kernels"},
    "compressors.operators": {"compressors.core", "compressors.codecs", "compressors.kernels"},
    "compressors.mechanisms": {"compressors.core", "compressors.operators", "compressors.codecs",
                               "compressors.kernels"},
    "compressors.sim": {"compressors.core", "compressors.operators", "compressors.mechanisms"},
    "ddp_hooks": {"compressors"},
}
ALLOWED["compressors"] = {key for key in ALLOWED if key.startswith("compressors.")}  # the package re-exports
PROJECT = ("compressors", "ddp_hooks", "benchmarks", "tests", "examples")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports, resolved to absolute names."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{target}.{alias.name}" for alias in node.names} if not node.module else {target}
    return {name for name in found if name.split(".")[0] in PROJECT}


def owner(module: str) -> str:
    """The ALLOWED key a module belongs to (its subpackage, or the top package)."""
    return max((key for key in ALLOWED if module == key or module.startswith(key + ".")), key=len,
               default=module.split(".")[0])


LIBRARY = sorted(p for top in ("compressors", "ddp_hooks") for p in (ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path):
    me = owner(module_name(path))
    for name in project_imports(path):
        there = owner(name)
        if there == me or (name == "compressors" and me.startswith("compressors")) or name.startswith("compressors._"):
            continue
        assert me in ALLOWED and any(there == a or there.startswith(a + ".") for a in ALLOWED[me]), \
            f"{module_name(path)} ({me}) imports {name} ({there}); {me} may import only {sorted(ALLOWED.get(me, ()))}"


def test_compressors_has_few_top_level_modules():
    modules = [p.name for p in (ROOT / "compressors").glob("*.py")]
    assert len(modules) <= 10, modules
