"""The README's map of the packages names files that exist, and every library module is on it."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def map_rows() -> list[tuple[list[str], str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Where things live"):]
    section = section[:section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) == 4 and cells[1].strip().startswith("`"):
            names = re.findall(r"`([\w./]+)`", cells[1])
            base = str(Path(names[0]).parent)  # `trainer/config.py`, `parallel.py`: the same folder
            rows.append(([n if "/" in n else f"{base}/{n}" for n in names], cells[2]))
    return rows


def test_every_path_on_the_map_exists():
    rows = map_rows()
    assert len(rows) >= 10
    for names, _ in rows:
        for name in names:
            assert (ROOT / name).exists(), name


def test_every_library_module_is_on_the_map():
    listed = {n for names, _ in map_rows() for n in names}
    for path in sorted((ROOT / "pipeline").rglob("*.py")) + sorted((ROOT / "trainer").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py" or rel.startswith("trainer/models/"):
            continue
        parents = {p.as_posix() + "/" for p in Path(rel).parents}
        assert rel in listed or parents & listed, f"{rel} is missing from README's 'Where things live'"



def _imports(path: Path) -> set[str]:
    import ast
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_arrow_points_up():
    """The floors are tools -> trainer -> pipeline: pipeline imports neither trainer nor tools,
    trainer never imports tools (a scan of every import statement, nested ones included)."""
    above = {"pipeline": ("trainer", "tools"), "trainer": ("tools",)}
    for floor, banned in above.items():
        for path in sorted((ROOT / floor).rglob("*.py")):
            bad = {m for m in _imports(path) if m.split(".")[0] in banned}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
