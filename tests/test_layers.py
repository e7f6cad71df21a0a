"""The package's layers (../shared/DESIGN.md): each module imports only from its own layer or the ones before
it, over every import in src/sensorium, those inside functions included; and there is no import cycle."""

import ast
from pathlib import Path

import sensorium

SOURCE = Path(sensorium.__file__).parent
ORDER = [
    ("errors",), ("keymaps",), ("batches",), ("nn",), ("models",), ("catalog",), ("media",), ("features",),
    ("text",), ("processors",), ("hub", "loading"), ("tasks",), ("index",), ("writers",), ("service",), ("cli",),
]
LAYER = {name: rank for rank, names in enumerate(ORDER) for name in names}

def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module (relative to sensorium, "" for the package) -> the sensorium modules it imports, anywhere."""
    graph = {}
    for path in SOURCE.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("sensorium.")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sensorium":
                assert node.level == 0, f"{path}: relative import"
                for alias in node.names:  # `from sensorium.x import y`: y may be a module itself
                    candidate = f"{node.module}.{alias.name}"
                    is_module = (SOURCE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or (
                        SOURCE.parent / Path(*candidate.split(".")) / "__init__.py").is_file()
                    found.add(candidate if is_module else node.module)
        graph[module_name(path)] = {m.removeprefix("sensorium.") for m in found if m != "sensorium"}
    return graph


def layer_of(module: str) -> int | None:
    return LAYER.get(module.split(".")[0])


def test_every_module_has_a_layer():
    assert [m for m in imports() if m and layer_of(m) is None] == []


def test_imports_follow_the_layers():
    broken = set()
    for module, targets in imports().items():
        if not module:
            continue  # the package's __init__ re-exports the public API from every layer
        for target in targets:
            if layer_of(target) > layer_of(module):
                broken.add((module, target.split(".")[0]))
    assert broken == set(), "imports against the layer order"


def test_models_never_open_files_nor_import_the_catalog_or_the_loader():
    graph = imports()
    above = {"media", "features", "text", "processors", "catalog", "hub", "loading", "tasks", "index", "service", "cli"}
    for module, targets in graph.items():
        if module.startswith("models"):
            assert not {t.split(".")[0] for t in targets} & above, module
    # nothing below the loader imports the catalog or the loader (the catalog is data the loader reads)
    for module, targets in graph.items():
        if module and layer_of(module) < LAYER["loading"] and module != "catalog":
            assert not {t.split(".")[0] for t in targets} & {"catalog", "hub", "loading"}, module


def test_no_import_cycle():
    every = imports()
    graph = {m: {t for t in targets if t in every} for m, targets in every.items() if m}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(module, trail):
        if state.get(module) == 2:
            return
        assert state.get(module) != 1, " -> ".join(trail + [module])
        state[module] = 1
        for target in graph.get(module, ()):
            visit(target, trail + [module])
        state[module] = 2

    for module in graph:
        visit(module, [])
