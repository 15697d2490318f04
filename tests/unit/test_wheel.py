"""The built wheel holds the whole package: every folder of flow/, executors/ and apps/ with an
``__init__.py`` as a package under ``fedgrid/``, every module, and the files the code runs by path
from its own folder (executors/htex.py starts ic_guard.py and pool_start.py as scripts).

The packages are found by setuptools (pyproject.toml ``[tool.setuptools.packages.find]``) through the
links in fedgrid/, none listed by hand: a new sub-package left out would be missing only from an
installed fedgrid, never from a checkout, so only a built wheel shows it. The wheel is built offline
(``pip wheel --no-build-isolation``, the setuptools of this environment) from a copy of the sources
in a temporary folder: setuptools reuses an existing ``build/`` folder, whose stale files could stand
in for a package the build leaves out. About 2 s."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("flow", "executors", "apps")  # fedgrid.flow, fedgrid.executors, fedgrid.apps
# a file the code opens or runs by its path beside a module: Path(__file__)...with_name("x")
_BESIDE = re.compile(r"""Path\(__file__\)[^\n]*?\.with_name\(\s*["']([^"']+)["']\s*\)""")


def _walk(folder: Path):
    for d, dirs, files in os.walk(folder):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        yield Path(d), files


def expected() -> tuple[set[str], set[str], set[str]]:
    """(packages, modules, files run from their folder) as paths in the wheel, from the checkout."""
    packages, modules, beside = {"fedgrid"}, set(), set()
    modules |= {f"fedgrid/{p.name}" for p in (REPO / "fedgrid").glob("*.py")}
    for top in FOLDERS:
        for d, files in _walk(REPO / top):
            rel = f"fedgrid/{d.relative_to(REPO).as_posix()}"
            if "__init__.py" in files:
                packages.add(rel)
            for f in files:
                if f.endswith(".py"):
                    modules.add(f"{rel}/{f}")
                    beside |= {f"{rel}/{name}" for name in _BESIDE.findall((d / f).read_text())}
    return packages, modules, beside


def _sources(dest: Path) -> Path:
    """What the build reads, copied: pyproject.toml, the readme, fedgrid/ with its links (kept as
    links, relative, so they point into the copy) and the three folders."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / f, dest / f)
    for top in ("fedgrid", *FOLDERS):
        shutil.copytree(REPO / top, dest / top, symlinks=True, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = _sources(tmp / "src"), tmp / "dist"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, f"pip wheel failed (needs setuptools>=77 here, the dev extra):\n{p.stdout}\n{p.stderr}"
    (whl,) = out.glob("fedgrid-*.whl")
    with zipfile.ZipFile(whl) as z:
        yield z


def test_the_links_in_fedgrid_point_at_the_three_folders() -> None:
    for top in FOLDERS:
        link = REPO / "fedgrid" / top
        assert link.is_symlink() and os.readlink(link) == f"../{top}", f"fedgrid/{top} should be a link to ../{top}"


def test_every_package_module_and_file_it_runs_is_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    packages, modules, beside = expected()
    assert {"fedgrid/flow/rounds", "fedgrid/apps/flower"} <= packages
    assert {"fedgrid/executors/ic_guard.py", "fedgrid/executors/pool_start.py"} <= beside  # the scan finds them
    names = set(wheel.namelist())
    missing = sorted(f"{p}/__init__.py" for p in packages if f"{p}/__init__.py" not in names)
    assert not missing, f"packages missing from the wheel: {missing}"
    assert not (lost := sorted((modules | beside) - names)), f"files missing from the wheel: {lost}"


def test_the_wheel_holds_real_files_under_fedgrid_only(wheel: zipfile.ZipFile) -> None:
    links = [i.filename for i in wheel.infolist() if stat.S_ISLNK(i.external_attr >> 16)]
    assert not links, f"symlinks in the wheel: {links}"
    tops = {n.split("/", 1)[0] for n in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"fedgrid"}, tops  # never a top-level `apps`
    assert all(wheel.getinfo(m).file_size > 0 for m in ("fedgrid/flow/rounds/runner.py", "fedgrid/apps/train.py"))
