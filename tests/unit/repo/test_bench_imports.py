"""bench/ and harness/ never import tests/, fleet/ imports neither, and only fleet is shipped.

What the tests and the benchmarks both need (relays, coordinators, labs, the attacks' cores)
is the top-level package harness/: bench/ imports fleet and harness, harness/ imports fleet,
fleet/ imports only itself (the installed package has no harness/). Every import is found
with ast, wherever it is written (inside a function too), as in test_layering.py.
"""

from __future__ import annotations

import textwrap
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

from tests.unit.repo.test_layering import imports_of, modules

REPO = Path(__file__).resolve().parents[3]

# importer -> the repository's top-level packages it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "bench": ("tests",),
    "harness": ("tests", "bench"),
    "fleet": ("tests", "bench", "harness"),
}


def forbidden_imports(root: Path, forbidden: dict[str, tuple[str, ...]]) -> list[str]:
    """`path:line: module imports name` for every import `forbidden` rules out under `root`."""
    found: list[str] = []
    for importer, banned in forbidden.items():
        mods = modules(root, importer)
        for module, path in mods.items():
            for package in banned:
                for site in imports_of(path, module, mods, package):
                    shown = path.relative_to(root)
                    found.append(f"{shown}:{site.line}: {module} imports {site.imported}")
    return found


def test_bench_harness_and_fleet_import_no_tests() -> None:
    found = forbidden_imports(REPO, FORBIDDEN)
    assert not found, (
        "move what bench/ and tests/ share into harness/ (docs/architecture.md, ## Tests):\n"
        + "\n".join(found)
    )


def test_only_fleet_is_shipped() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(
        module_name
        for top in ("fleet", "harness", "tests", "bench")
        for module_name, path in modules(REPO, top).items()
        if path.name == "__init__.py"
    )
    shipped = [p for p in packages if any(fnmatchcase(p, pattern) for pattern in include)]
    assert "harness" in packages
    assert "fleet.mesh" in packages
    assert shipped == [p for p in packages if p == "fleet" or p.startswith("fleet.")]


# -- the checker itself, on a fake tree ------------------------------------------------------


def test_checker_finds_imports_of_tests_anywhere(tmp_path: Path) -> None:
    files = {
        "bench/__init__.py": "",
        "bench/good.py": "import fleet\nfrom harness.cli import run\nfrom . import other\n",
        "bench/other.py": "def f():\n    from tests.fleetlab import FleetLab\n",
        "harness/__init__.py": "",
        "harness/lab.py": "import tests.cli\n",
        "fleet/__init__.py": "",
        "fleet/x.py": "from harness import lab\n",
    }
    for name, source in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    assert forbidden_imports(tmp_path, FORBIDDEN) == [
        "bench/other.py:2: bench.other imports tests.fleetlab",
        "harness/lab.py:1: harness.lab imports tests.cli",
        "fleet/x.py:1: fleet.x imports harness",
    ]
