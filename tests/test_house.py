"""The house rules of the package, checked on its source: imports run one way (no circles, no hidden
function-level imports of the project's own modules), modules stay small, the README lists every module."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "p2bot_utils"
MAX_LINES = 400
LAZY_OK = {"cli.py", "cli_models.py"}  # the command line imports a command's module when that command runs (start-up time)


def _modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PKG.glob("*.py")) if p.stem != "__main__"}


def _project_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module level?) for every import of ``p2bot_utils.X``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "p2bot_utils":
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("p2bot_utils.")]
        out += [(n, node.lineno, id(node) in top) for n in names if n in _modules()]
    return out


def import_graph() -> dict[str, set[str]]:
    return {name: {m for m, _, _ in _project_imports(p)} - {name} for name, p in _modules().items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, stack + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_find_cycle_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": set(), "a": {"a2"}, "a2": {"x", "a"}}) == ["a", "a2", "a"]


def test_no_import_circle_at_module_or_function_level():
    assert find_cycle(import_graph()) is None, f"import circle: {' -> '.join(find_cycle(import_graph()))}"


def test_no_function_level_imports_of_the_project_outside_cli():
    hidden = [f"{name}.py:{line} imports {mod}" for name, p in _modules().items() if p.name not in LAZY_OK
              for mod, line, at_top in _project_imports(p) if not at_top]
    assert not hidden, "function-level imports of the project hide the dependency order:\n" + "\n".join(hidden)


def test_the_bottom_layers_import_nothing_above_them():
    graph = import_graph()
    assert graph["metrics"] == set() and graph["errors"] == set() and graph["episodes"] <= {"errors"}
    assert graph["profile"] <= {"errors", "profile_check", "cpu_memory"} and graph["profile_check"] <= {"errors"}
    assert graph["cpu_memory"] == set() and graph["cpu_linear"] == set()  # CPU speed helpers: torch / libc only
    data_side = {"episodes", "data_files", "data_split", "data", "sides", "ir"}
    models = {"transmitter", "decoding", "receiver", "backbones", "lm_likelihood", "training", "checkpoints",
              "openai_gpt"}
    for name in data_side:  # data code never imports model code
        assert not graph[name] & models, f"{name} imports model code: {graph[name] & models}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_is_small(name):
    n = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"p2bot_utils/{name}.py has {n} lines (> {MAX_LINES}): split it"


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [n for n in _modules() if not re.search(rf"\b{n}\.py\b", readme) and n != "__init__"]
    assert not missing, f"README layout does not list: {missing}"


def test_license_matches_pyproject():
    assert "license = { text = \"MIT\" }" in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")


def test_silence_is_spelled_once():
    spelled = [p.name for p in PKG.glob("*.py") if re.search(r'^\s*SILENCE\s*=', p.read_text(encoding="utf-8"), re.M)]
    assert spelled == ["episodes.py"]


def repeated_block(lines: list[str], min_lines: int = 2) -> int | None:
    """First line number (1-based) where a block of >= ``min_lines`` non-blank lines is followed at once by the
    same block again: the mark of an edit script that ran twice. None when there is none."""
    for size in range(min_lines, len(lines) // 2 + 1):
        for i in range(len(lines) - 2 * size + 1):
            block = lines[i:i + size]
            if all(s.strip() for s in block) and block == lines[i + size:i + 2 * size]:
                return i + 1
    return None


def test_repeated_block_on_hand_made_lines():
    assert repeated_block(["a = 1", "if x:", "    f()", "if x:", "    f()", "b"]) == 2
    assert repeated_block(["a", "a", "b"]) is None  # one repeated line is not a block (e.g. two blank prints)
    assert repeated_block(["if x:", "    f()", "", "if x:", "    f()"]) is None  # not back to back


def _code_sources() -> dict[str, list[str]]:
    out = {p.name: p.read_text(encoding="utf-8").splitlines() for p in sorted(PKG.glob("*.py"))}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        for k, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                out[f"{nb.name} cell {k}"] = "".join(cell["source"]).splitlines()
    return out


def test_no_code_block_is_written_twice_in_a_row():
    twice = {name: line for name, lines in _code_sources().items() if (line := repeated_block(lines)) is not None}
    assert not twice, f"a block repeated back to back (an edit applied twice?) at: {twice}"
