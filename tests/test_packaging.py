"""`src/` is one installed package, `mailjobs`: what a wheel holds and what it can do on its own,
and the rules that keep the package whole (no `sys.path` edits, no private names across modules)."""
from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON_TREES = ("src", "tests", "bench", "deploy")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (built,) = out.glob("mailjobs-*.whl")
    return built


def test_the_wheel_installs_only_the_package_mailjobs_with_its_sql_and_templates(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"mailjobs"}
    migrations = sorted(p.name for p in (ROOT / "sql").glob("*.sql"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("mailjobs/sql/")) == migrations
    assert "mailjobs/queries.sql" in names
    assert "mailjobs/dashboard/templates/dashboard/jobs.html" in names
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "mailjobs = mailjobs.entry:main" in entry_points


def _install(wheel, tmp_path):
    """The wheel installed into a directory of its own (no dependencies); its path."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    return target


def test_an_installed_wheel_finds_its_migrations_queries_and_templates(wheel, tmp_path):
    target = _install(wheel, tmp_path)
    probe = ("import mailjobs, mailjobs.dao_mysql as d, mailjobs.dashboard.pages as p\n"
             "from mailjobs.db.migrations import discover\n"
             "print(mailjobs.__file__); print(len(discover()))\n"
             "print(d.QUERIES_FILE.is_file())\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    where, count, queries = done.stdout.split()
    assert where.startswith(str(target))
    assert int(count) == len(list((ROOT / "sql").glob("*.sql")))
    assert queries == "True"


def source_modules() -> list[str]:
    """Every module of src/ by its dotted name under mailjobs."""
    names = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        parts = path.relative_to(ROOT / "src").with_suffix("").parts
        names.append(".".join(("mailjobs", *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return sorted(names)


def test_the_wheel_holds_every_module_of_src(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "src").rglob("*.py"))
               if f"mailjobs/{path.relative_to(ROOT / 'src').as_posix()}" not in names]
    assert missing == []


def test_an_installed_wheel_finds_every_module_and_runs_its_command_from_itself(wheel, tmp_path):
    """Each module found in the wheel's copy, not elsewhere (the test environment's editable
    install would otherwise answer for a sub-package the wheel lacks); found, not imported:
    web.wsgi builds the app when imported."""
    target = _install(wheel, tmp_path)
    probe = ("import importlib.util, sys\n"
             "for name in sys.argv[1:]:\n"
             "    print(name, importlib.util.find_spec(name).origin)\n"
             "from mailjobs.entry import main\n"
             "main(['--help'])\n")
    done = subprocess.run([sys.executable, "-c", probe, *source_modules()], cwd=tmp_path,
                          capture_output=True, text=True,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    found = dict(line.split(" ", 1) for line in done.stdout.splitlines()
                 if line.startswith("mailjobs"))
    assert sorted(found) == source_modules()
    assert [name for name, where in found.items() if not where.startswith(str(target))] == []
    assert "serve" in done.stdout and "worker" in done.stdout     # the command's own help


def python_files():
    for tree in PYTHON_TREES:
        yield from (ROOT / tree).rglob("*.py")


def test_no_module_edits_sys_path():
    offenders = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "path"
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mailjobs"):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {alias.name}"
                              for alias in node.names if alias.name.startswith("_")]
    assert offenders == []
