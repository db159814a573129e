"""The package layout is the architecture (ARCHITECTURE.md): lower layers never import
higher ones, and nothing but the CLI (and the benchmarks' own modules) imports the
benchmarks."""

import ast
from pathlib import Path

import alexnet

SRC = Path(alexnet.__file__).parent
# Lowest first. Top-level modules other than the CLI are the foundation every layer uses.
LAYERS = ["foundation", "network", "data", "engine", "apps", "bench", "cli"]


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[1:2] == ["cli"] or parts[1:2] == ["__main__"]:
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "foundation"


def _module(path: Path) -> str:
    return "alexnet." + ".".join(path.relative_to(SRC).with_suffix("").parts)


def _imports(source: str, module: str) -> list[str]:
    """The alexnet modules ``source`` (the text of ``module``) imports, anywhere in it."""
    is_init = module.endswith(".__init__")
    package = module[: -len(".__init__")] if is_init else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            found += [n for n in names if n.startswith("alexnet.")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("alexnet.")]
    return found


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for path in SRC.rglob("*.py"):
        module = _module(path)
        mine = LAYERS.index(_layer(module))
        for target in _imports(path.read_text(), module):
            theirs = LAYERS.index(_layer(target))
            if theirs > mine or (
                _layer(target) == "bench" and _layer(module) not in ("cli", "bench")
            ):
                wrong.append(f"{module} ({_layer(module)}) imports {target} ({_layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_a_violation():
    # The check above must be able to fail: a network module importing the engine lazily.
    source = "def f():\n    from ..engine import train\n    from ..atomic import write_text\n"
    targets = _imports(source, "alexnet.network.probe")
    assert targets == ["alexnet.engine", "alexnet.atomic"]
    assert LAYERS.index(_layer(targets[0])) > LAYERS.index(_layer("alexnet.network.probe"))
    assert _layer(targets[1]) == "foundation"
