"""The package layout: the library apart from the application, and the arrow between them.

``jaxcurv/`` is the library; ``jaxcurv/app/`` is the application built on it (the command
line, configs, data, reference models, training loop, reports, plots). The app imports
the library, never the reverse, and ``import jaxcurv`` loads no part of the app and none
of its optional dependencies (matplotlib, tqdm). Modules share helpers through public
names only, except the two private modules made to be shared (``_checks``, ``_compile``).
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxcurv"
APP = PACKAGE / "app"
# The private modules whose private names every jaxcurv module may use.
SHARED_PRIVATE = (
    "jaxcurv._argnums",
    "jaxcurv._cg_loop",
    "jaxcurv._checks",
    "jaxcurv._compile",
    "jaxcurv._dispatch",
    "jaxcurv._hellmann_feynman",
    "jaxcurv._lanczos",
    "jaxcurv._precision",
    "jaxcurv._symmetry",
)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(*, app: bool) -> dict[str, ast.Module]:
    """``{module name: syntax tree}`` of the app's modules, or of the library's."""
    paths = sorted(PACKAGE.rglob("*.py"))
    return {
        _module_name(p): ast.parse(p.read_text(), str(p))
        for p in paths
        if (APP in p.parents) == app
    }


def _imports(tree: ast.Module) -> list[tuple[str, str | None, int]]:
    """Every import anywhere in the module (inside functions too), as ``(module, name,
    line)``: ``import a.b`` is ``("a.b", None, ...)``, ``from a import b`` is ``("a", "b",
    ...)``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_cross_imports(sources: dict[str, ast.Module]) -> list[str]:
    """``module:line imports other._name`` for each private name a module takes from
    another jaxcurv module, by ``from other import _name`` or as ``other._name`` through
    a module it imported."""
    bad = []
    for module, tree in sources.items():
        aliases = {}  # local name -> the jaxcurv module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("jaxcurv") and alias.asname:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxcurv"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if (PACKAGE.parent / (full.replace(".", "/") + ".py")).exists():
                        aliases[alias.asname or alias.name] = full
                    elif _is_private(alias.name) and node.module not in SHARED_PRIVATE:
                        bad.append(f"{module}:{node.lineno} imports {full}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _is_private(node.attr)
                and aliases[node.value.id] not in SHARED_PRIVATE
            ):
                bad.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return sorted(set(bad))


def test_import_jaxcurv_loads_no_app_and_no_cli_extra():
    # A fresh interpreter: in this one the other tests have imported everything already.
    code = (
        "import json, sys; import jaxcurv; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('matplotlib', 'tqdm') or m == 'jaxcurv.app' or m.startswith('jaxcurv.app.'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(proc.stdout) == []


def test_the_library_exports_stay_where_they_were():
    import jaxcurv

    for name in ("analyze_landscape", "loss_slices", "Landscape", "LossSlices"):
        assert getattr(jaxcurv, name).__module__ == "jaxcurv.landscape", name
    for name in jaxcurv.__all__:
        module = getattr(jaxcurv, name).__module__
        assert module.startswith("jaxcurv.") and not module.startswith("jaxcurv.app"), name


def test_the_library_never_imports_the_app_matplotlib_or_tqdm():
    library = _sources(app=False)
    assert {"jaxcurv", "jaxcurv.landscape", "jaxcurv.products"} <= set(library)
    bad = [
        f"{module}:{line} imports {name or target}"
        for module, tree in library.items()
        for target, name, line in _imports(tree)
        if target.split(".")[0] in ("matplotlib", "tqdm")
        or target == "jaxcurv.app"
        or target.startswith("jaxcurv.app.")
        or (target == "jaxcurv" and name == "app")
    ]
    assert bad == []


def test_the_app_takes_no_private_name_from_another_module():
    app = _sources(app=True)
    assert {"jaxcurv.app.cli", "jaxcurv.app.loop", "jaxcurv.app.landscape_report"} <= set(app)
    assert _private_cross_imports(app) == []


def test_the_library_takes_no_private_name_from_another_module():
    assert _private_cross_imports(_sources(app=False)) == []


def test_outside_spectral_and_cg_the_library_takes_no_private_name():
    bad = _private_cross_imports(_sources(app=False))
    assert [b for b in bad if not b.startswith(("jaxcurv.spectral:", "jaxcurv.cg:"))] == []


def test_the_private_import_scan_finds_both_spellings():
    # The scan must be able to fail: a module taking a private name either way is caught.
    tree = ast.parse(
        "from jaxcurv.derivatives import _check_real_inputs\n"
        "from jaxcurv.app import plots as plots_lib\n"
        "from jaxcurv._compile import _helper\n"
        "plots_lib._loss_before_points([])\n"
        "plots_lib.pyplot()\n"
    )
    assert _private_cross_imports({"jaxcurv.app.example": tree}) == [
        "jaxcurv.app.example:1 imports jaxcurv.derivatives._check_real_inputs",
        "jaxcurv.app.example:4 uses jaxcurv.app.plots._loss_before_points",
    ]
