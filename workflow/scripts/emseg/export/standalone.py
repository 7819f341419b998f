"""The exported network's code as one Python file that needs torch and nothing of emseg.

A model package's PyTorch state-dict weights name an architecture file and a callable in it;
bioimageio.core imports that file on its own, where emseg is not installed. Rather than keep a
second copy of the networks, the file is generated from emseg's own modules: their bodies in
dependency order, their imports of emseg dropped (the names are then defined above) and their
other imports gathered at the top. Anything the concatenation could get wrong (a name defined
twice, an emseg name not defined above, an import below the top of a module) stops the export.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from emseg import __version__

# dependency order: every emseg name a module imports is defined by a module above it
MODULES = (
    "emseg.models.geometry",
    "emseg.models.unet",
    "emseg.models.fcn",
    "emseg.models.vnet",
    "emseg.export.network",
)
FILE_NAME = "emseg_networks.py"
CALLABLE = "membrane_network"


def standalone_source() -> str:
    """The source of the architecture file: the networks and `membrane_network(**model_config)`."""
    imports: list[str] = []
    sections: list[str] = []
    defined: set[str] = set()
    for module in MODULES:
        text = _module_path(module).read_text()
        tree = ast.parse(text)
        head = _leading_imports(module, tree)
        for node in head:
            if _is_emseg(node):
                _require_defined(module, node, defined)
            elif not _is_future(node):
                statement = ast.get_source_segment(text, node)
                if statement is not None and statement not in imports:
                    imports.append(statement)
        for name in _top_level_names(tree):
            if name in defined:
                raise ValueError(f"{module}: {name} is also defined by a module above it")
            defined.add(name)
        body_start = head[-1].end_lineno if head else 0
        body = "\n".join(text.splitlines()[body_start:]).strip("\n")
        sections.append(f"# --- {module} ---\n\n{body}\n")
    header = (
        f'"""emseg {__version__} networks for a BioImage Model Zoo package (generated file).\n\n'
        f"{CALLABLE}(**model_config) builds the network; it needs only torch.\n"
        '"""\n\nfrom __future__ import annotations\n\n'
    )
    return header + "\n".join(imports) + "\n\n\n" + "\n\n".join(sections)


def _module_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot find the source of {module}")
    return Path(spec.origin)


def _leading_imports(module: str, tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports at the top of a module (after its docstring); none may follow its code."""
    body = list(tree.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    head: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if not isinstance(node, ast.Import | ast.ImportFrom):
            break
        head.append(node)
    for node in ast.walk(ast.Module(body=body[len(head) :], type_ignores=[])):
        if isinstance(node, ast.Import | ast.ImportFrom):
            raise ValueError(
                f"{module}: an import below the top of the module (line {node.lineno})"
            )
    return head


def _is_emseg(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "emseg"
    return any(alias.name.split(".")[0] == "emseg" for alias in node.names)


def _is_future(node: ast.Import | ast.ImportFrom) -> bool:
    return isinstance(node, ast.ImportFrom) and node.module == "__future__"


def _require_defined(module: str, node: ast.Import | ast.ImportFrom, defined: set[str]) -> None:
    if not isinstance(node, ast.ImportFrom):
        raise ValueError(f"{module}: `import emseg...` cannot be inlined; import names from it")
    for alias in node.names:
        if alias.asname is not None or alias.name not in defined:
            raise ValueError(f"{module}: {alias.name} from {node.module} is not defined above it")


def _top_level_names(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names
