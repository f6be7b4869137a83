"""The layering of docs/architecture.md, kept true: every import in the package (at module level and inside
functions) is parsed, and the test fails on an import cycle between files, on an arrow against the layers,
and on torch reaching the deployment half."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from conftest import run_without_torch

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "lowbit"

# Layers of the training half, lowest first: a module may import its own layer and those below it.
TRAINING_ORDER = ["lowbit.quant", "lowbit.nn", "lowbit.models", "lowbit.train"]
DEPLOYMENT = ("lowbit.runtime", "lowbit.kernels")
# The Triton GPU kernels take CUDA tensors, so they are torch by nature: they sit in the kernel layer for its
# API and level sets, but nothing else in the deployment half may import them.
GPU_KERNELS = ("lowbit.kernels.gpu", "lowbit.kernels._triton_kernels")
TRAINING = ("lowbit.quant", "lowbit.nn", "lowbit.models", "lowbit.train", "lowbit.export", "lowbit.summary",
            "lowbit.bench", "lowbit.bench_networks", "lowbit.cli", "lowbit.generate", "lowbit.zoo")
# Shared by both halves: no torch, no quantization, no training.
BASE = ("lowbit._version", "lowbit.errors", "lowbit.fileio", "lowbit.registry")
NUMPY_DATA = ("lowbit.data.base", "lowbit.data.text", "lowbit.data.idx", "lowbit.data.cifar", "lowbit.data.svhn",
              "lowbit.data.sample", "lowbit.data.download", "lowbit.data")


def _modules():
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


MODULES = _modules()


def _in(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _imports(mod: str):
    """(target module, line, is_torch) for every import statement of ``mod``, anywhere in the file."""
    path = MODULES[mod]
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for a in node.names:
                full = f"{name}.{a.name}"
                if a.name.startswith("_") and full not in MODULES and name in MODULES:
                    continue  # a compiled extension (lowbit.kernels._bitgemm): a leaf, not the package
                out.append((full if full in MODULES else name, node.lineno))
    edges = []
    for target, line in out:
        if target == "torch" or target.startswith("torch."):
            edges.append(("torch", line))
        elif target.startswith("lowbit"):
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != mod:
                edges.append((target, line))
    return edges


GRAPH = {m: _imports(m) for m in MODULES}


def test_the_parser_sees_imports_inside_functions():
    # cli imports the training half only inside its commands: those arrows must be seen
    targets = {t for t, _ in GRAPH["lowbit.cli"]}
    assert "lowbit.train" in targets and "lowbit.runtime" in targets and "lowbit.export" in targets
    assert len(MODULES) > 40


def test_no_import_cycles_between_files():
    """Tarjan's strongly connected components over module -> module arrows; any component of two or more
    files is a cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _ in GRAPH[v]:
            if w == "torch":
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in MODULES:
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def _violations(sources, allowed, exact=False):
    bad = []
    for m in MODULES:
        if not (m in sources if exact else _in(m, sources)):
            continue
        for t, line in GRAPH[m]:
            if not allowed(m, t):
                bad.append(f"{MODULES[m].relative_to(SRC)}:{line} imports {t}")
    return bad


def test_deployment_half_never_imports_the_training_half_or_torch():
    def allowed(m, t):
        if _in(m, GPU_KERNELS):
            return t == "torch" or _in(t, ("lowbit.kernels",) + BASE)
        return (t != "torch" and not _in(t, GPU_KERNELS)
                and (_in(t, DEPLOYMENT) or _in(t, BASE) or t in NUMPY_DATA or t == "lowbit"))

    assert not _violations(DEPLOYMENT, allowed)


def test_the_zoo_sits_on_top():
    """Only the command line imports the zoo; the zoo's table module itself imports no torch at module level
    (``load_runtime`` runs without it: tests/test_zoo.py)."""
    users = sorted({m for m in MODULES for t, _ in GRAPH[m] if _in(t, ("lowbit.zoo",)) and not _in(m, ("lowbit.zoo",))})
    assert users == ["lowbit.cli"]
    tree = ast.parse(MODULES["lowbit.zoo"].read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not any("torch" in (getattr(n, "module", None) or "") or any("torch" in a.name for a in n.names) for n in top)


def test_kernels_sit_below_the_runtime():
    allowed = lambda m, t: not _in(t, ("lowbit.runtime",))
    assert not _violations(("lowbit.kernels",), allowed)


def test_training_layers_import_only_downhill():
    def allowed(m, t):
        if _in(t, ("lowbit.export", "lowbit.cli", "lowbit.bench", "lowbit.bench_networks", "lowbit.summary", "lowbit.runtime",
                   "lowbit.zoo")):
            return False  # nothing in the training half reaches the bridge, the tools or the runtime
        rank = next(i for i, p in enumerate(TRAINING_ORDER) if _in(m, (p,)))
        higher = TRAINING_ORDER[rank + 1:]
        return not _in(t, higher)

    assert not _violations(TRAINING_ORDER, allowed)


def test_data_and_base_import_no_model_code():
    allowed = lambda m, t: not _in(t, TRAINING + DEPLOYMENT)
    assert not _violations(("lowbit.data", "lowbit.errors", "lowbit.fileio", "lowbit.registry", "lowbit._version"), allowed)


def test_numpy_data_loaders_and_base_import_no_torch():
    allowed = lambda m, t: t != "torch"
    assert not _violations(NUMPY_DATA + BASE, allowed, exact=True)


def test_importing_every_deployment_module_leaves_torch_unloaded():
    deploy = sorted(m for m in MODULES if _in(m, DEPLOYMENT) and not _in(m, GPU_KERNELS))
    run_without_torch(f"import importlib, lowbit\nfor m in {deploy!r}:\n    importlib.import_module(m)\n")


@pytest.mark.parametrize("layer", TRAINING_ORDER)
def test_each_training_layer_exists_as_a_package(layer):
    assert (PKG / layer.split(".")[1] / "__init__.py").is_file()
