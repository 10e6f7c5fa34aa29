"""Commands that train nothing, and stages refusing bad input, never import TensorFlow."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("tensorflow", "keras", "matplotlib")

# (how the command is started, its arguments) - each ends with a one-line error or a result.
LIGHT = {
    "make rollback": ("src/rollback.py", ["mlflow.tracking_uri=sqlite:///{tmp}/m.db"]),
    "make champion-history": (
        "src/champion_history.py",
        ["mlflow.tracking_uri=sqlite:///{tmp}/m.db"],
    ),
    "make clean-runs": ("src/clean_runs.py", ["--no-dvc", "--tracking-uri=sqlite:///{tmp}/m.db"]),
    "make clean": ("src/clean.py", ["--root={tmp}/scratch"]),
    # Bad input is refused before a stage imports anything heavy (one second, not eight).
    "train refusing train.epochs=0": ("src/train.py", ["train.epochs=0"]),
    "evaluate refusing registry.mode=up": ("src/evaluate.py", ["registry.mode=up"]),
    "register refusing data.val_split=2": ("src/register.py", ["data.val_split=2"]),
    "report refusing seed=-1": ("src/report.py", ["seed=-1"]),
    "tune refusing seed=-1": ("src/tune.py", ["seed=-1"]),
    "tune refusing tune.n_trials=0": ("src/tune.py", ["tune.n_trials=0"]),
    "reproduce refusing reproduce.tolerance.accuracy=2": (
        "src/reproduce.py",
        ["reproduce.tolerance.accuracy=2"],
    ),
    "reproduce of a version that does not exist": (
        "src/reproduce.py",
        ["mlflow.tracking_uri=sqlite:///{tmp}/m.db", "reproduce.version=3"],
    ),
}


@pytest.mark.parametrize("command", sorted(LIGHT))
def test_a_command_that_trains_nothing_imports_no_heavy_library(
    command, tmp_path, project_root, subprocess_env
):
    target, args = LIGHT[command]
    args = [a.format(tmp=tmp_path) for a in args]
    run = (
        f"import runpy, sys; sys.argv = [{target!r}, *{args!r}]\n"
        "try:\n"
        + (
            f"    runpy.run_module({target.split()[1]!r}, run_name='__main__')\n"
            if target.startswith("-m ")
            else f"    runpy.run_path({target!r}, run_name='__main__')\n"
        )
        + "except SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", run],
        cwd=project_root,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", (command, proc.stdout, proc.stderr[-500:])


def test_the_import_layers_contract_holds(project_root, subprocess_env):
    """import-linter's `layers` contract in pyproject.toml: no upward or sideways import."""
    lint = str(Path(sys.executable).parent / "lint-imports")
    env = {**subprocess_env, "PYTHONPATH": str(project_root / "src")}
    # --no-cache: a cache folder in the checkout would race every test that lists the root.
    proc = subprocess.run(
        [lint, "--no-cache"], cwd=project_root, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "0 broken" in proc.stdout, proc.stdout[-3000:]


def import_graph(src) -> dict[str, set[str]]:
    """Every project module (scripts included) -> the project modules it imports anywhere."""
    import ast

    modules = {}
    for path in src.rglob("*.py"):
        # A package is its __init__.py: `from fmnist_mlops import CLASS_NAMES` imports it.
        name = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        modules[name] = names
    return {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    memo: dict[str, list[str]] = {}

    def chain(module: str, stack: tuple[str, ...] = ()) -> list[str]:
        if module in memo:
            return memo[module]
        if module in stack:
            return [module]
        below = max((chain(d, (*stack, module)) for d in graph[module]), key=len, default=[])
        memo[module] = [module, *below]
        return memo[module]

    return max((chain(m) for m in graph), key=len)


def test_at_most_six_import_levels_scripts_and_lazy_imports_included(project_root):
    chain = longest_chain(import_graph(project_root / "src"))
    assert len(chain) <= 6, " -> ".join(chain)


def test_the_level_count_sees_lazy_imports(tmp_path):
    """The counter must not be fooled by an import inside a function, nor miss a package's
    ``__init__.py`` imported by name."""
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from p import b\n")
    (pkg / "b.py").write_text("import p.c\n")
    (pkg / "c.py").write_text("from p import X\n")
    (pkg / "__init__.py").write_text("X = 1\n")
    assert longest_chain(import_graph(tmp_path)) == ["p.a", "p.b", "p.c", "p"]


def test_every_module_of_the_package_sits_in_a_layer(project_root):
    """The contract names packages: every module lives in one, none loose at the top, and
    every package is a layer (a package left out of the contract would be unconstrained)."""
    import tomllib

    config = tomllib.loads((project_root / "pyproject.toml").read_text())
    (contract,) = config["tool"]["importlinter"]["contracts"]
    listed = {m.strip() for layer in contract["layers"] for m in layer.split("|")}
    package = project_root / "src" / "fmnist_mlops"
    loose = sorted(p.name for p in package.glob("*.py") if p.stem != "__init__")
    assert loose == [], f"modules outside a layer package: {loose}"
    packages = {f"fmnist_mlops.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert packages == listed
    nested = sorted(str(p.relative_to(package)) for p in package.glob("*/*/*.py"))
    assert nested == [], f"one level of packages: {nested}"


def test_no_function_is_longer_than_80_lines(project_root):
    import ast

    long = []
    for path in (project_root / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(project_root)}:{node.name} {lines}")
    assert long == []


def test_no_script_shadows_a_standard_or_installed_module(project_root):
    # A script run directly has its folder first on sys.path, and spawned processes inherit
    # it: a benchmarks/queue.py once replaced the standard `queue` module inside every spawned
    # MLflow writer (urllib3 needs queue.LifoQueue).
    from importlib.metadata import packages_distributions

    taken = set(sys.stdlib_module_names) | set(packages_distributions())
    skip = {".venv", ".git", "node_modules", "fmnist_mlops"}  # the package's modules are namespaced
    shadows = sorted(
        str(path.relative_to(project_root))
        for path in project_root.rglob("*.py")
        if not skip & set(path.relative_to(project_root).parts) and path.stem in taken
    )
    assert not shadows, f"rename these scripts: {shadows}"


def test_test_modules_stand_alone(project_root):
    """No test module imports another (shared code lives in tests/helpers.py, fixtures in
    conftest.py) or patches sys.path (scripts are loaded with helpers.load_script)."""
    import ast

    tests = project_root / "tests"
    modules = {p.stem for p in tests.glob("test_*.py")} | {"conftest"}
    found = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.path":
                found.append(f"{path.name}:{node.lineno} uses sys.path")
                continue
            else:
                continue
            found += [f"{path.name} imports {n}" for n in names if n.split(".")[0] in modules]
    assert found == []


def test_xdist_groups_stay_in_one_process(tmp_path):
    """`make test` runs two processes with ``--dist loadgroup``: tests marked with one
    ``xdist_group`` (a module's server or trained model) must all run in the same process, or
    each process builds the shared thing again (pytest 9.2 with pytest-xdist 3.8 dropped them)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_grouped.py").write_text(
        "import os, pytest\n"
        "@pytest.mark.xdist_group('one')\n"
        "@pytest.mark.parametrize('i', range(8))\n"
        "def test_grouped(i):\n"
        "    print('WORKER', os.environ['PYTEST_XDIST_WORKER'])\n"
        "@pytest.mark.parametrize('i', range(8))\n"
        "def test_free(i):\n"
        "    pass\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-v",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "test_grouped.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-2000:]
    ran = [line.split() for line in out.stdout.splitlines() if line.startswith("[gw")]
    grouped = {words[0] for words in ran if "::test_grouped" in words[-1]}
    free = {words[0] for words in ran if "::test_free" in words[-1]}
    assert len(grouped) == 1, f"one group ran in {sorted(grouped)}"
    assert free <= {"[gw0]", "[gw1]"} and free, out.stdout[-2000:]


def test_every_name_imported_from_the_package_is_defined_there(project_root):
    """After a module moves or splits, an import of a name it no longer holds fails only when
    that code runs (often in a subprocess, minutes later); read every import statically."""
    import ast

    src = project_root / "src"
    defined: dict[str, set[str]] = {}
    for path in (src / "fmnist_mlops").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
                for t in node.targets:
                    if isinstance(t, ast.Tuple):
                        names |= {e.id for e in t.elts if isinstance(e, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        defined[module] = names
    files = [*src.rglob("*.py"), *(project_root / "tests").glob("*.py")]
    files += [*(project_root / "benchmarks").rglob("*.py"), *(project_root / "tools").glob("*.py")]
    missing = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module in defined):
                continue
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if alias.name not in defined[node.module] and submodule not in defined:
                    missing.append(f"{path.relative_to(project_root)}: {submodule}")
            if not any(node.module.startswith(m) for m in defined):
                missing.append(f"{path.relative_to(project_root)}: {node.module}")
    assert missing == []


def test_every_module_is_short_and_says_what_it_holds(project_root):
    """At most 300 lines a module, each opening with a docstring: a reader finds a concept by
    its module's name and first line, not by scrolling."""
    import ast

    long, silent = [], []
    for path in sorted((project_root / "src" / "fmnist_mlops").rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(project_root))
        if len(text.splitlines()) > 300:
            long.append(f"{name} {len(text.splitlines())}")
        if not ast.get_docstring(ast.parse(text)):
            silent.append(name)
    assert long == [] and silent == []


def test_every_command_is_a_script_in_src_and_no_module_is_one(project_root):
    """One way in: the Makefile, docs and tests start commands as ``python src/<name>.py``;
    no module of the package has a ``__main__`` block or is started with ``python -m``."""
    import ast

    package = project_root / "src" / "fmnist_mlops"
    mains = []
    for path in package.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                mains.append(str(path.relative_to(project_root)))
    assert mains == []
    texts = [project_root / "Makefile", project_root / "README.md"]
    texts += [*(project_root / "docs").glob("*.md"), *(project_root / "tests").glob("*.py")]
    texts += [*(project_root / "benchmarks").glob("*.py"), *(project_root / "tools").glob("*.py")]
    started = [
        str(p.relative_to(project_root))
        for p in texts
        if p.name not in ("refactoring.md", "test_layering.py")
        and re.search(r"""-m["',\s]+fmnist_mlops|-m fmnist_mlops""", p.read_text())
    ]
    assert started == []
    for path in (project_root / "src").glob("*.py"):
        text = path.read_text()
        assert "stage_app(" in text or "command(" in text, f"{path.name} is made another way"
