"""Issue 23: no import cycle among the product modules, counting the imports inside functions (a lazy import
hides a cycle from Python, not from a reader) and leaving out those made for type hints only."""
from __future__ import annotations

import ast

from conftest import ROOT

PACKAGES = ("extract", "classify", "finetune", "advise")


def _modules() -> dict[str, ast.Module]:
    files = {f"{p}.{f.stem}": f for p in PACKAGES for f in (ROOT / p).glob("*.py") if f.stem != "__init__"}
    files.update({p: ROOT / p / "__init__.py" for p in PACKAGES})
    files.update(pipeline=ROOT / "pipeline.py", api=ROOT / "api.py", cnncodes=ROOT / "__init__.py")
    return {name: ast.parse(path.read_text()) for name, path in files.items()}


def _lazy_names(trees: dict[str, ast.Module]) -> dict[str, dict[str, str]]:
    """Each package's PEP 562 table (_WHERE): name -> the submodule that defines it."""
    return {p: {k: f"{p}.{v}" for k, v in ast.literal_eval(n.value).items()} for p in PACKAGES
            for n in trees[p].body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "_WHERE"}


def _short(module: str) -> str:
    """``cnncodes.extract.runner`` -> ``extract.runner``: the modules are named by their place in the tree."""
    return module.removeprefix("cnncodes.") if module != "cnncodes" else module


def _edges(name: str, tree: ast.Module, known: set[str], lazy: dict) -> set[str]:
    package = name if name in PACKAGES else name.rpartition(".")[0]
    typing_only = {id(n) for i in ast.walk(tree) if isinstance(i, ast.If) and "TYPE_CHECKING" in ast.unparse(i.test)
                   for n in ast.walk(i)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {_short(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(filter(None, [package, node.module])) if node.level == 1 else _short(node.module or "")
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else lazy.get(base, {}).get(a.name, base)
                    for a in node.names}
    return (out & known) - {name}


def test_no_import_cycle_among_the_product_modules():
    trees = _modules()
    lazy = _lazy_names(trees)
    graph = {name: _edges(name, tree, set(trees), lazy) for name, tree in trees.items()}
    assert "finetune.predict" in graph["classify.runs"]  # the scan sees imports inside functions too
    state: dict[str, int] = {}

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1  # on the current path
        for after in sorted(graph[module]):
            if state.get(after) == 1:
                return path[path.index(after):] + [module, after] if after in path else [module, after]
            if after not in state and (found := cycle_from(after, path + [module])):
                return found
        state[module] = 2
        return None

    for module in sorted(graph):
        found = module not in state and cycle_from(module, [])
        assert not found, " -> ".join(found)
