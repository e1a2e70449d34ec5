"""The package layout: public import paths keep working, the top of ``jakiro`` stays small, and imports only run
down the layers of docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# module prefix -> layer; the longest matching prefix wins. A module may import its own layer or lower ones.
LAYERS = {
    "jakiro.common": 0, "jakiro.drafts": 0, "jakiro_star.tree_choices": 0,  # foundations and data
    "jakiro.decoding.tree": 1, "jakiro.model.draft": 1, "jakiro.model.moe": 1, "jakiro.model.init_draft": 1,
    "jakiro.model.target_init": 1,
    "jakiro.target": 2,
    "jakiro.decoding": 3, "jakiro_star": 3,
    "jakiro.model": 4, "jakiro_star.model": 4, "jakiro.__init__": 4,
    "jakiro.ge_data": 5,
    "jakiro.train": 6, "jakiro_star.train": 6,
    "jakiro.evaluation": 7, "jakiro_star.evaluation": 7,
    "jakiro.application": 8, "jakiro.demo": 8, "jakiro.__main__": 8,
}


def layer_of(module: str) -> int:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module} has no layer in LAYERS: add it (and to docs/architecture.md)")
    return LAYERS[max(matches, key=len)]


def project_modules():
    for package in ("jakiro", "jakiro_star"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts), path


def imported_modules(path: Path):
    """Every jakiro / jakiro_star module a file imports, at any depth (function-level imports included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        yield from (name for name in names if name.split(".")[0] in ("jakiro", "jakiro_star"))


def test_imports_only_run_down_the_layers():
    upward = []
    for module, path in project_modules():
        own = layer_of(module)
        for imported in imported_modules(path):
            if imported in ("jakiro", "jakiro_star"):
                continue
            if layer_of(imported) > own:
                upward.append(f"{module} (layer {own}) imports {imported} (layer {layer_of(imported)})")
    assert not upward, "imports that run back up a layer:\n" + "\n".join(upward)


def test_jakiro_below_the_front_end_does_not_import_jakiro_star():
    offenders = [f"{module} imports {imported}" for module, path in project_modules()
                 if module.startswith("jakiro.") and layer_of(module) < 4
                 for imported in imported_modules(path)
                 if imported.startswith("jakiro_star") and imported != "jakiro_star.tree_choices"]
    assert not offenders, offenders


def test_top_of_jakiro_holds_a_handful_of_modules():
    top = sorted(path.name for path in (ROOT / "jakiro").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "demo.py"]


def test_layer_table_is_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [prefix for prefix in LAYERS if not prefix.endswith("__init__") and not prefix.endswith("__main__")
               and f"`{prefix}" not in doc]
    assert not missing, f"docs/architecture.md does not name {missing}"


@pytest.mark.parametrize("statement", [
    "from jakiro import EaModel",
    "from jakiro.model.ea_model import EaModel",
    "from jakiro_star.model import StarEaModel",
    "from jakiro_star.model.ea_model import EaModel",
])
def test_public_import_paths(statement):
    namespace: dict = {}
    exec(statement, namespace)
    cls = next(value for key, value in namespace.items() if not key.startswith("__"))
    from jakiro.model.ea_model import EaModel

    assert isinstance(cls, type) and issubclass(cls, EaModel)


def test_public_paths_name_the_same_classes():
    import jakiro
    import jakiro.model.ea_model
    import jakiro_star.model
    import jakiro_star.model.ea_model

    assert jakiro.EaModel is jakiro.model.ea_model.EaModel
    assert jakiro_star.model.ea_model.EaModel is jakiro_star.model.StarEaModel
