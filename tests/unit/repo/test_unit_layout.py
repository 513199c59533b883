"""tests/unit mirrors fleet/: the test of fleet/<package>/<module>.py is found at its path.

A test file is tests/unit/<package>/test_<module>.py (fleet/netaddr.py: tests/unit/
test_netaddr.py), or test_<module>_<aspect>.py when one module's tests are split by aspect
(agent/test_verify_capabilities.py). Repo-wide checks (docs, layering, layout) live in
tests/unit/repo/, which mirrors nothing: its files are listed here. tests/unit/bench/ and
tests/unit/harness/ mirror the top-level bench/ and harness/ packages. Every folder is a package
(an empty __init__.py), so that files of the same name in two folders can both be imported.
docs/architecture.md ("## Tests") states the same rule.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
UNIT = REPO / "tests" / "unit"
REPO_WIDE = "repo"
# tests/unit/bench/ and tests/unit/harness/ mirror the top-level packages of those names.
OTHER_PACKAGES = ("bench", "harness")

# tests/unit/repo/: checks of the repository as a whole, which no fleet module holds.
REPO_WIDE_TESTS = frozenset(
    {
        "test_bench_imports.py",
        "test_docs_cli.py",
        "test_docs_secrets.py",
        "test_layering.py",
        "test_unit_layout.py",
    }
)


def mirror_problem(test: Path, unit: Path, package: Path) -> str | None:
    """Why `test` (a test_*.py under `unit`) mirrors no module of `package`, or None."""
    relative = test.relative_to(unit)
    folder = package.joinpath(*relative.parts[:-1])
    if not (folder / "__init__.py").is_file():
        return f"{package.name}/{relative.parent} is not a package of {package.name}/"
    stem = relative.stem.removeprefix("test_")
    modules = {p.stem for p in folder.glob("*.py") if p.name != "__init__.py"}
    if any(stem == m or stem.startswith(m + "_") for m in modules):
        return None
    # A subpackage has a folder of its own: test_wire_framing.py beside fleet/wire/ is the old
    # flat layout, not an aspect of the package.
    if (folder / stem / "__init__.py").is_file():
        return None
    where = f"{package.name}/{relative.parent}/" if relative.parent.parts else f"{package.name}/"
    return f"no module {stem} (nor a module its name starts with) in {where}"


def layout_problems(unit: Path, package: Path, repo_wide: frozenset[str]) -> list[str]:
    """Every file or folder of `unit` that breaks the layout, as `path: why`."""
    problems: list[str] = []
    for folder in sorted(p for p in [unit, *unit.rglob("*")] if p.is_dir()):
        if folder.name == "__pycache__" or "__pycache__" in folder.parts:
            continue
        if not (folder / "__init__.py").is_file():
            problems.append(f"{folder.relative_to(unit.parent)}: no __init__.py")
    for test in sorted(unit.rglob("test_*.py")):
        shown = test.relative_to(unit.parent)
        if test.parent == unit / REPO_WIDE:
            if test.name not in repo_wide:
                problems.append(f"{shown}: not in REPO_WIDE_TESTS (repo-wide checks only)")
            continue
        top = test.relative_to(unit).parts[0]
        if top in OTHER_PACKAGES and (unit / top).is_dir():
            problem = mirror_problem(test, unit / top, package.parent / top)
        else:
            problem = mirror_problem(test, unit, package)
        if problem is not None:
            problems.append(f"{shown}: {problem}")
    return problems


def test_unit_tests_mirror_the_package() -> None:
    problems = layout_problems(UNIT, REPO / "fleet", REPO_WIDE_TESTS)
    assert not problems, (
        "tests/unit must mirror fleet/ (tests/unit/<package>/test_<module>.py, see "
        "docs/architecture.md):\n" + "\n".join(problems)
    )


def test_every_listed_repo_wide_test_exists() -> None:
    missing = sorted(n for n in REPO_WIDE_TESTS if not (UNIT / REPO_WIDE / n).is_file())
    assert not missing, f"REPO_WIDE_TESTS lists files that do not exist, delete: {missing}"


# -- the checker itself, on a fake tree ------------------------------------------------------


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def _fake(tmp_path: Path) -> tuple[Path, Path]:
    _touch(
        tmp_path,
        "fleet/__init__.py",
        "fleet/netaddr.py",
        "fleet/wire/__init__.py",
        "fleet/wire/framing.py",
        "fleet/stun/__init__.py",
        "fleet/stun/codec.py",
        "fleet/agent/__init__.py",
        "fleet/agent/verify.py",
        "tests/unit/__init__.py",
        "tests/unit/test_netaddr.py",
        "tests/unit/helpers.py",
        "tests/unit/wire/__init__.py",
        "tests/unit/wire/test_framing.py",
        "tests/unit/agent/__init__.py",
        "tests/unit/agent/test_verify_capabilities.py",
        "tests/unit/test_stun.py",  # the package fleet/stun, at the root
        "tests/unit/repo/__init__.py",
        "tests/unit/repo/test_docs.py",
    )
    return tmp_path / "tests" / "unit", tmp_path / "fleet"


def test_checker_accepts_mirrored_files_helpers_and_listed_repo_wide_tests(
    tmp_path: Path,
) -> None:
    unit, package = _fake(tmp_path)
    assert layout_problems(unit, package, frozenset({"test_docs.py"})) == []


def test_checker_names_each_file_that_mirrors_nothing(tmp_path: Path) -> None:
    unit, package = _fake(tmp_path)
    _touch(
        tmp_path,
        "tests/unit/test_wire_framing.py",  # the old flat name
        "tests/unit/wire/test_frames.py",  # no module frames
        "tests/unit/gossip/__init__.py",
        "tests/unit/gossip/test_core.py",  # no package fleet/gossip
        "tests/unit/agent/test_verifying.py",  # a prefix of a module's name is not its name
        "tests/unit/stun/test_codec.py",  # no __init__.py in this folder
        "tests/unit/repo/test_misc.py",  # not listed
    )
    assert layout_problems(unit, package, frozenset({"test_docs.py"})) == [
        "unit/stun: no __init__.py",
        "unit/agent/test_verifying.py: no module verifying (nor a module its name starts with)"
        " in fleet/agent/",
        "unit/gossip/test_core.py: fleet/gossip is not a package of fleet/",
        "unit/repo/test_misc.py: not in REPO_WIDE_TESTS (repo-wide checks only)",
        "unit/test_wire_framing.py: no module wire_framing (nor a module its name starts"
        " with) in fleet/",
        "unit/wire/test_frames.py: no module frames (nor a module its name starts with) in"
        " fleet/wire/",
    ]
