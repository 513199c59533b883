"""The layer order of docs/architecture.md, enforced: no module of fleet/ imports upwards.

Every module under fleet/ is parsed with ast (nothing is imported) and each of its fleet.*
imports is checked, wherever it is written: at the top, inside a function, under
`if TYPE_CHECKING:`. A module may import its own unit (package or top-level module) and any
unit of a lower layer; units of an `independent` layer may not import each other; a layer
with `may_import` may use only the layers named there. A module that belongs to no layer is
an error too, so a new package has to be placed before it lands.

The same table is written in docs/architecture.md; a test checks that both agree.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Layer:
    """A rank of the stack: its units, and what its modules may import besides themselves."""

    name: str
    units: tuple[str, ...]  # dotted package or module names; the root package means itself only
    independent: bool = False  # units of this layer may not import each other
    may_import: tuple[str, ...] | None = None  # layer names; None: every lower layer


# Bottom first. Keep docs/architecture.md ("## Layers") the same.
LAYERS: tuple[Layer, ...] = (
    Layer(
        "utilities",
        (
            "fleet",
            "fleet.background",
            "fleet.config",
            "fleet.deadline",
            "fleet.durable",
            "fleet.log",
            "fleet.netaddr",
            "fleet.stun",
        ),
        independent=True,
    ),
    Layer("daemon", ("fleet.daemon",)),  # runs the roles' daemons: logs, so not a utility
    Layer("identity", ("fleet.identity", "fleet.vocabulary"), independent=True),
    Layer("wire", ("fleet.wire",)),
    Layer("capability", ("fleet.capability",)),
    Layer("relay", ("fleet.relay",)),
    Layer("mesh", ("fleet.mesh",)),
    Layer("protocol", ("fleet.protocol",)),
    Layer("audit", ("fleet.audit",)),
    # Beside the stack from wire to audit: it needs only the shared vocabulary, and only the
    # roles and the CLI run Nix.
    Layer("nix", ("fleet.nix",), may_import=("utilities", "identity")),
    Layer("roles", ("fleet.coordinator", "fleet.agent", "fleet.admin"), independent=True),
    Layer("cli", ("fleet.cli", "fleet.__main__")),
)


@dataclass(frozen=True)
class Narrowing:
    """Of the unit `imported`, the unit `importer` may use only the modules in `only`."""

    importer: str
    imported: str
    only: tuple[str, ...]
    why: str


NARROWINGS: tuple[Narrowing, ...] = (
    Narrowing(
        "fleet.mesh",
        "fleet.relay",
        ("fleet.relay.url",),
        "the daemons inject the relay client (Endpoint(relay_factory=relay_client_factory))",
    ),
)

# Imports that break a rule today, each with why it is tolerated; remove an entry by fixing it
# (test_allowed_exceptions_are_still_needed fails once one is no longer used).
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Violation:
    path: Path  # relative to the tree's root
    line: int
    module: str
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {self.imported}: {self.rule}"


@dataclass(frozen=True)
class ImportSite:
    module: str
    imported: str
    path: Path
    line: int


def module_name(path: Path, root: Path) -> str:
    """`fleet/mesh/endpoint.py` -> `fleet.mesh.endpoint`; a package's __init__ is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` (a directory under `root`), by dotted name."""
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def imports_of(path: Path, module: str, known: Iterable[str], package: str) -> Iterator[ImportSite]:
    """Every import of `package` in the file, anywhere in it, resolved to a dotted name."""
    known = set(known)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            # `from fleet.mesh import disco` imports the module fleet.mesh.disco.
            targets = [
                f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin
                for a in node.names
            ]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target == package or target.startswith(package + "."):
                yield ImportSite(module, target, path, node.lineno)


def unit_of(module: str, layers: Iterable[Layer], root_package: str) -> tuple[int, str] | None:
    """(layer index, unit) of a module: the longest unit that is it or contains it."""
    best: tuple[int, str] | None = None
    for index, layer in enumerate(layers):
        for unit in layer.units:
            inside = module == unit or (unit != root_package and module.startswith(unit + "."))
            if inside and (best is None or len(unit) > len(best[1])):
                best = (index, unit)
    return best


def check(
    root: Path,
    package: str,
    layers: tuple[Layer, ...],
    allowed: Iterable[tuple[str, str]] = (),
    narrowings: Iterable[Narrowing] = (),
) -> tuple[list[Violation], set[tuple[str, str]]]:
    """The rule broken by each import of `package` under `root`, and the allowances used."""
    allowed = set(allowed)
    used: set[tuple[str, str]] = set()
    names = {layer.name for layer in layers}
    for layer in layers:
        unknown = set(layer.may_import or ()) - names
        assert not unknown, f"layer {layer.name}: may_import names no layer {sorted(unknown)}"
    found = modules(root, package)
    violations: list[Violation] = []
    for module, path in found.items():
        shown = path.relative_to(root)
        src = unit_of(module, layers, package)
        if src is None:
            violations.append(
                Violation(shown, 1, module, "-", "the module is in no layer (add it to LAYERS)")
            )
            continue
        for site in imports_of(path, module, found, package):
            dst = unit_of(site.imported, layers, package)
            rule = _broken_rule(src, dst, layers, site.imported) or _narrowed(
                src, dst, site.imported, narrowings
            )
            if rule is None:
                continue
            key = (module, site.imported)
            if key in allowed:
                used.add(key)
                continue
            violations.append(Violation(shown, site.line, module, site.imported, rule))
    return violations, used


def _narrowed(
    src: tuple[int, str],
    dst: tuple[int, str] | None,
    imported: str,
    narrowings: Iterable[Narrowing],
) -> str | None:
    for n in narrowings:
        if dst is None or (src[1], dst[1]) != (n.importer, n.imported):
            continue
        if not any(imported == m or imported.startswith(m + ".") for m in n.only):
            return f"{n.importer} may use only {', '.join(n.only)} of {n.imported}: {n.why}"
    return None


def _broken_rule(
    src: tuple[int, str], dst: tuple[int, str] | None, layers: tuple[Layer, ...], imported: str
) -> str | None:
    if dst is None:
        return f"{imported} is in no layer"
    (src_index, src_unit), (dst_index, dst_unit) = src, dst
    if src_unit == dst_unit:
        return None
    here, there = layers[src_index], layers[dst_index]
    if dst_index > src_index:
        return f"layer {here.name} ({src_unit}) must not import the higher layer {there.name}"
    if dst_index == src_index:
        if here.independent:
            return f"{src_unit} and {dst_unit} are independent units of layer {here.name}"
        return None
    if here.may_import is not None and there.name not in here.may_import:
        allowed = ", ".join(here.may_import)
        return f"layer {here.name} may import only {allowed}, not {there.name} ({dst_unit})"
    return None


# -- the real tree ---------------------------------------------------------------------------


def test_fleet_imports_follow_the_layers() -> None:
    violations, _ = check(REPO, "fleet", LAYERS, ALLOWED, NARROWINGS)
    assert not violations, "imports against docs/architecture.md's layers:\n" + "\n".join(
        str(v) for v in violations
    )


def test_allowed_exceptions_are_still_needed() -> None:
    _, used = check(REPO, "fleet", LAYERS, ALLOWED, NARROWINGS)
    assert set(ALLOWED) == used, f"no longer needed, delete: {sorted(set(ALLOWED) - used)}"


def test_every_unit_exists() -> None:
    found = modules(REPO, "fleet")
    missing = [u for layer in LAYERS for u in layer.units if u not in found]
    assert not missing, f"units in LAYERS that are not modules of fleet/: {missing}"


def _documented_layers(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """(layer, units) from the table under "## Layers": `fleet/x` is fleet.x, `fleet/x.py`
    the module fleet.x, `fleet/__init__.py` the root package."""
    section = ("\n" + text).split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue
        units = []
        for ref in re.findall(r"`(fleet/[\w/.]*)`", cells[2]):
            ref = ref.removesuffix("/__init__.py").removesuffix(".py").rstrip("/")
            units.append(ref.replace("/", "."))
        rows.append((cells[1], tuple(units)))
    return rows


def test_docs_architecture_shows_the_same_layers() -> None:
    documented = _documented_layers((REPO / "docs" / "architecture.md").read_text())
    assert documented == [(layer.name, layer.units) for layer in LAYERS]


# -- the checker itself, on a fake tree ------------------------------------------------------

FAKE_LAYERS = (
    Layer("base", ("pkg", "pkg.util")),
    Layer("low", ("pkg.low", "pkg.side"), independent=True),
    Layer("tool", ("pkg.tool",), may_import=("base",)),
    Layer("high", ("pkg.high",)),
)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return tmp_path


GOOD = {
    "pkg/__init__.py": "",
    "pkg/util.py": "import os\n",
    "pkg/low/__init__.py": "from pkg.util import x\n",
    "pkg/low/core.py": "from . import helper\nfrom .helper import y\n",
    "pkg/low/helper.py": "import pkg\n",
    "pkg/side.py": "from pkg import util\n",
    "pkg/tool/__init__.py": "from pkg.util import z\n",
    "pkg/high/__init__.py": "from pkg.low import core\nfrom pkg.tool import t\nimport pkg.side\n",
}


def test_checker_accepts_a_tree_that_follows_its_layers(tmp_path: Path) -> None:
    root = _tree(tmp_path, GOOD)
    assert check(root, "pkg", FAKE_LAYERS) == ([], set())


@pytest.mark.parametrize(
    ("file", "source", "line", "imported", "rule"),
    [
        ("pkg/low/core.py", "import os\nfrom pkg.high import h\n", 2, "pkg.high", "higher layer"),
        # inside a function and under TYPE_CHECKING count as much as a top-level import
        (
            "pkg/low/core.py",
            "def f():\n    import pkg.high\n",
            2,
            "pkg.high",
            "must not import the higher layer high",
        ),
        (
            "pkg/util.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.low.core import C\n",
            3,
            "pkg.low.core",
            "layer base (pkg.util) must not import the higher layer low",
        ),
        # relative imports are resolved
        ("pkg/low/core.py", "from ..high import h\n", 1, "pkg.high", "higher layer"),
        ("pkg/low/core.py", "from pkg import side\n", 1, "pkg.side", "independent units"),
        ("pkg/tool/__init__.py", "from pkg.low import x\n", 1, "pkg.low", "may import only base"),
        ("pkg/stray.py", "", 1, "-", "in no layer"),
    ],
)
def test_checker_names_module_line_and_rule(
    tmp_path: Path, file: str, source: str, line: int, imported: str, rule: str
) -> None:
    root = _tree(tmp_path, {**GOOD, file: source})
    violations, _ = check(root, "pkg", FAKE_LAYERS)
    assert len(violations) == 1, violations
    (v,) = violations
    assert v.path == Path(file)
    assert v.line == line
    assert v.imported == imported
    assert rule in v.rule
    assert f"{file}:{line}: " in str(v)


def test_checker_allows_only_the_listed_exception(tmp_path: Path) -> None:
    root = _tree(tmp_path, {**GOOD, "pkg/side.py": "import pkg.low.core\nimport pkg.high\n"})
    violations, used = check(root, "pkg", FAKE_LAYERS, {("pkg.side", "pkg.low.core")})
    assert used == {("pkg.side", "pkg.low.core")}
    assert [(v.module, v.imported) for v in violations] == [("pkg.side", "pkg.high")]


def test_checker_applies_a_narrowing(tmp_path: Path) -> None:
    # GOOD's pkg/high imports pkg.low.core, the one module of pkg.low it may use.
    narrow = Narrowing("pkg.high", "pkg.low", ("pkg.low.core",), "inject the rest")
    root = _tree(tmp_path, GOOD)
    assert check(root, "pkg", FAKE_LAYERS, (), [narrow]) == ([], set())
    root = _tree(tmp_path, {"pkg/high/y.py": "import os\nfrom pkg.low.helper import y\n"})
    violations, _ = check(root, "pkg", FAKE_LAYERS, (), [narrow])
    assert [(str(v.path), v.line, v.imported) for v in violations] == [
        ("pkg/high/y.py", 2, "pkg.low.helper")
    ]
    assert "pkg.high may use only pkg.low.core of pkg.low: inject the rest" in violations[0].rule


def test_docs_table_parser_reads_units() -> None:
    text = textwrap.dedent(
        """\
        ## Layers
        | layer | name | units | may import |
        | --- | --- | --- | --- |
        | 0 | base | `fleet/__init__.py`, `fleet/util.py` | nothing |
        | 1 | high | `fleet/high` | every lower layer |

        ## Next
        | 9 | other | `fleet/no` | |
        """
    )
    assert _documented_layers(text) == [
        ("base", ("fleet", "fleet.util")),
        ("high", ("fleet.high",)),
    ]
