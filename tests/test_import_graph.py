"""The package's import graph: no cycle, the models below the core, nothing installed as a bare name.

Every ``import`` statement counts, function-local ones too (a function-local import does not make a
circle go away, it only hides it)."""
from __future__ import annotations

import ast
import collections
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for base, prefix in (("gag_jax", "gag_jax"), ("models", "gag_jax.models")):
        for path in (ROOT / base).rglob("*.py"):
            parts = list(path.relative_to(ROOT / base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


def _edges(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    def known(name: str) -> str | None:
        if name.startswith("models"):
            name = "gag_jax." + name
        while name and name not in modules:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    edges = collections.defaultdict(set)
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rsplit(".", 1)[0]
                    base = f"{anchor}.{base}" if base else anchor
                subs = [f"{base}.{a.name}" for a in node.names]
                targets = subs if all(known(s) == s or known("gag_jax." + s) for s in subs) else [base, *subs]
            else:
                continue
            for target in filter(None, map(known, targets)):
                if target != module and not (target == "gag_jax" and module.startswith("gag_jax")):
                    edges[module].add(target)
    return edges


def _cycles(edges) -> list[list[str]]:
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    assert _cycles(_edges(_modules())) == []


def test_the_models_sit_below_the_core():
    modules = _modules()
    edges = _edges(modules)
    bottom = {"gag_jax.model", "gag_jax.backend", "gag_jax.ops"}
    from_models = {t for m in modules if m.startswith("gag_jax.models") for t in edges[m]
                   if not t.startswith("gag_jax.models")}
    assert from_models <= bottom, f"the models import {sorted(from_models - bottom)}"
    upper = ("gag_jax.models", "gag_jax.experiments", "gag_jax.cli", "gag_jax.__main__")
    core = [m for m in modules if not m.startswith(upper) and m != "gag_jax"]
    pointing_up = sorted((m, t) for m in core for t in edges[m] if t.startswith(upper))
    assert pointing_up == []
    for m in bottom:  # the bottom floor imports nothing of the package
        assert not {t for t in edges[m] if t.startswith("gag_jax")}, m


def test_nothing_is_installed_under_a_bare_generic_name():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "gag_jax" or p.startswith("gag_jax.") for p in config["packages"])
    assert config["package-dir"] == {"gag_jax.models": "models"}


def test_the_installed_package_never_imports_the_repository_tools():
    """benchmarks/ and notebooks/ are not installed: no import statement of the package names them
    (function-local ones included), and nothing puts the checkout on sys.path."""
    for path in [*(ROOT / "gag_jax").rglob("*.py"), *(ROOT / "models").rglob("*.py")]:
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("benchmarks", "notebooks") for n in names), path
        assert "sys.path.append" not in text, path
