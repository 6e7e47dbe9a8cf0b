"""The layering of the code, written down and enforced (README, Layout): every import of every module under
alitool/, export/ and trainers/ (module level and inside functions, read with ast, without importing anything)
is checked against the rules below. A violation is printed as file:line.

1. contract: alitool/contract/* imports nothing of alitool's but alitool.errors and itself, and never torch.
2. running side: the ONNX and TensorRT backends and their dispatcher, alitool/io/*, the encode path
   (alitool/encoding/*), the pictures modules, alitool/atomic.py, alitool/errors.py, alitool/runs.py,
   alitool/cpu_features.py and alitool/tensorrt_support.py never import torch or the training side (models,
   layers, checkpoint, conv_gemm, trainers, export, data, the PyTorch backend), so that an install without
   PyTorch can encode from ONNX files.
3. export: export/* never imports alitool.backends (the running side); what both need lives in alitool/contract/
   or alitool/tensorrt_support.py.
4. library: nothing but alitool/cli.py and alitool/commands/* imports alitool.commands or alitool.cli.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"alitool": ROOT / "alitool", "alitool.export": ROOT / "export", "alitool.trainers": ROOT / "trainers"}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root
    line: int
    name: str  # absolute dotted name: "torch.nn", "alitool.models.ALI" (a from-import names module.attribute)
    lazy: bool  # inside a function (runs only when called), not at module level


def module_name(path: Path) -> str:
    for package, folder in sorted(PACKAGES.items(), key=lambda kv: -len(str(kv[1]))):
        if path.is_relative_to(folder):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(path)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, source: str | None = None) -> list[Import]:
    """Every import statement in ``path`` (or in ``source``, read as if it were that file), relative imports
    resolved; ``if TYPE_CHECKING:`` blocks never run and are left out."""
    rel = str(path.relative_to(ROOT))
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, lazy)
                continue
            if isinstance(child, ast.Import):
                found.extend(Import(rel, child.lineno, alias.name, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")
                    parent = parent[: len(parent) - (child.level - 1)]
                    base = ".".join([*parent, base] if base else parent)
                found.extend(Import(rel, child.lineno, f"{base}.{alias.name}", lazy) for alias in child.names)
            visit(child, lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(ast.parse(path.read_text(encoding="utf-8") if source is None else source, filename=rel), False)
    return found


def all_modules() -> list[Path]:
    return sorted(p for folder in PACKAGES.values() for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def in_files(rel: str, *patterns: str) -> bool:
    """``rel`` is one of ``patterns``: a file path, or a folder ending in '/' (everything under it)."""
    return any(rel.startswith(p) if p.endswith("/") else rel == p for p in patterns)


# ---- the rules ---------------------------------------------------------------------------------------------

CONTRACT = ("alitool/contract/",)

RUNNING_SIDE = (
    "alitool/backends/__init__.py",  # the dispatcher: load_backend picks one of the backends below
    "alitool/backends/opening.py",  # load_backend with the commands' one-line errors
    "alitool/backends/onnx_backend.py",
    "alitool/backends/tensorrt_backend.py",
    "alitool/io/",
    "alitool/encoding/",  # the encode path
    "alitool/viz.py",  # pictures
    "alitool/io/pictures.py",
    "alitool/atomic.py",
    "alitool/outputs.py",  # the one rule for every writer: checks, locks, stale temporaries
    "alitool/errors.py",
    "alitool/threads.py",  # the thread policy: training uses it, and it must stay free of torch
    "alitool/tensorrt_support.py",  # shared by export/tensorrt.py and the TensorRT backend
    "alitool/cpu_features.py",  # the INT8 backend's saturation warning reads the CPU's flags
    "alitool/runs.py",  # the default-model rule of every RUN command
    "alitool/install.py",  # --version / doctor and the training commands' "needs the training stack" line
    "alitool/api.py",  # the Python API (alitool.load): checkpoints only through load_backend's lazy dispatch
)
TRAINING_SIDE = (
    "torch",
    "alitool.models",
    "alitool.layers",
    "alitool.checkpoint",
    "alitool.conv_gemm",
    "alitool.conv_autotune",
    "alitool.trainers",
    "alitool.export",
    "alitool.data",  # the training datasets
    "alitool.backends.torch_backend",
)

# Exceptions to rule 2, each lazy (inside a function, so importing the module never pulls the import in):
# (file, imported name).
RUNNING_SIDE_ALLOWED = {
    # The dispatcher opens a checkpoint with the PyTorch backend only when it is given one.
    ("alitool/backends/__init__.py", "alitool.backends.torch_backend"),
    ("alitool/backends/__init__.py", "alitool.backends.torch_backend.TorchBackend"),
    # TensorRT engines run on a GPU: their device memory and CUDA stream come from PyTorch's CUDA runtime (no
    # pycuda / cuda-python), and so do the GPU's name and compute capability the sidecar check compares.
    ("alitool/backends/tensorrt_backend.py", "torch"),
    ("alitool/tensorrt_support.py", "torch"),
    # alitool doctor asks torch about CUDA, when torch is installed.
    ("alitool/install.py", "torch"),
}

LIBRARY_EXCEPT = ("alitool/cli.py", "alitool/commands/")


def contract_violations(imp: Import) -> str | None:
    if not in_files(imp.file, *CONTRACT):
        return None
    if under(imp.name, "torch"):
        return "the contract never imports torch"
    if under(imp.name, "alitool") and imp.name != "alitool" and not under(imp.name, "alitool.errors",
                                                                             "alitool.contract"):
        return "the contract imports nothing of alitool's but alitool.errors and alitool.contract"
    return None


def running_side_violations(imp: Import) -> str | None:
    if not in_files(imp.file, *RUNNING_SIDE) or not under(imp.name, *TRAINING_SIDE):
        return None
    if imp.lazy and (imp.file, imp.name) in RUNNING_SIDE_ALLOWED:
        return None
    return "the running side never imports torch or the training side"


def export_violations(imp: Import) -> str | None:
    if in_files(imp.file, "export/") and under(imp.name, "alitool.backends"):
        return "export/ never imports the running side's backends (shared pieces: alitool/contract/, " \
               "alitool/tensorrt_support.py)"
    return None


def library_violations(imp: Import) -> str | None:
    if not in_files(imp.file, *LIBRARY_EXCEPT) and under(imp.name, "alitool.commands", "alitool.cli"):
        return "the library never imports the command line (alitool.cli, alitool.commands)"
    return None


RULES = [contract_violations, running_side_violations, export_violations, library_violations]


@pytest.fixture(scope="module")
def every_import() -> list[Import]:
    return [imp for path in all_modules() for imp in imports_of(path)]


@pytest.mark.parametrize("rule", RULES, ids=[r.__name__.removesuffix("_violations") for r in RULES])
def test_layering(rule, every_import):
    found = [f"{imp.file}:{imp.line}: imports {imp.name}: {why}"
             for imp in every_import if (why := rule(imp)) is not None]
    for line in found:
        print(line)
    assert not found, f"{len(found)} layering violation(s):\n" + "\n".join(found)


def test_the_checker_sees_imports_everywhere():
    """The reader finds module-level, function-level, relative and from-imports, and skips TYPE_CHECKING blocks."""
    path = ROOT / "alitool" / "io" / "_layering_probe.py"  # never written: its source is given
    source = (
        "from typing import TYPE_CHECKING\n"
        "import torch.nn\n"
        "from . import video\n"
        "from ..models import ALI\n"
        "if TYPE_CHECKING:\n"
        "    import alitool.checkpoint\n"
        "def f():\n"
        "    from alitool.trainers import loop\n"
    )
    tree_imports = imports_of(path, source)
    assert [(i.line, i.name, i.lazy) for i in tree_imports] == [
        (1, "typing.TYPE_CHECKING", False), (2, "torch.nn", False), (3, "alitool.io.video", False),
        (4, "alitool.models.ALI", False), (8, "alitool.trainers.loop", True)]
    assert [running_side_violations(i) is not None for i in tree_imports] == [False, True, False, True, True]
    assert module_name(ROOT / "export" / "tensorrt.py") == "alitool.export.tensorrt"
    assert module_name(ROOT / "alitool" / "contract" / "__init__.py") == "alitool.contract"
