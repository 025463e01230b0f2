"""The package is layered: no two modules of ddpm_fast import each other, directly or through
others (the public fronts, e.g. ddpm_fast/sampling.py, import only downward). Read from the
source with ``ast``, so imports inside functions count too."""
import ast
import pathlib

import ddpm_fast

PACKAGE = pathlib.Path(ddpm_fast.__file__).parent


def _modules(root: pathlib.Path) -> dict[str, tuple[pathlib.Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _targets(name: str, is_pkg: bool, node, modules) -> list[str]:
    """The ddpm_fast modules one import statement names (``from . import x``: the submodule x
    if there is one, else the package)."""
    if isinstance(node, ast.Import):
        found = [a.name for a in node.names]
    else:
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        if node.level:
            base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = []
    for target in found:
        while target not in modules and "." in target:   # `import ddpm_fast.ops.x.y` -> nearest module
            target = target.rsplit(".", 1)[0]
        if target in modules and target != name:
            out.append(target)
    return out


def import_graph(root: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
    modules = _modules(root)
    graph = {}
    for name, (path, is_pkg) in modules.items():
        graph[name] = {t for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                       if isinstance(node, (ast.Import, ast.ImportFrom))
                       for t in _targets(name, is_pkg, node, modules)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycles_between_ddpm_fast_modules():
    graph = import_graph()
    assert "ddpm_fast.sampling" in graph and "ddpm_fast.samplers.fast" in graph  # the walk saw the package
    found = cycles(graph)
    detail = "; ".join(" <-> ".join(c) + " (" + ", ".join(
        f"{a} imports {sorted(graph[a] & set(c))}" for a in c) + ")" for c in found)
    assert not found, f"modules of ddpm_fast import each other: {detail}"


def test_cycle_finder_sees_direct_indirect_and_function_local_imports(tmp_path):
    """The checker itself: a two-module cycle through a function-local relative import and a
    three-module cycle are found; a plain chain is not a cycle."""
    pkg = tmp_path / "ddpm_fast"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "front.py": "from .sub import back\n",
        "sub/__init__.py": "",
        "sub/back.py": "def f():\n    from ..front import g\n",
        "a.py": "import ddpm_fast.b\n",
        "b.py": "from . import c\n",
        "c.py": "from ddpm_fast.a import x\n",
        "leaf.py": "from .sub import back\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    assert sorted(cycles(import_graph(pkg))) == [
        ["ddpm_fast.a", "ddpm_fast.b", "ddpm_fast.c"], ["ddpm_fast.front", "ddpm_fast.sub.back"]]


def test_sampling_front_imports_no_private_names_back():
    """samplers/ never reaches up into the public front for helpers."""
    graph = import_graph()
    up = sorted(m for m in graph if m.startswith("ddpm_fast.samplers") and "ddpm_fast.sampling" in graph[m])
    assert not up, f"{up} import ddpm_fast.sampling"
