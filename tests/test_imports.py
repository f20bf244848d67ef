"""No module of avtca_jax imports one that imports it back, function-level imports included (docs/data.md)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "avtca_jax"


def _module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
  """{module: modules of avtca_jax it imports anywhere in its file (top level or inside functions)}."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parent = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parent + ([base] if base else []))
        targets.add(base)
        targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    graph[name] = {t for t in targets if t in modules and t != name}
  return graph


def find_cycles(graph):
  cycles, state, stack = [], {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == "open":
        cycles.append(stack[stack.index(target):] + [target])
      elif target not in state:
        visit(target)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  return cycles


def test_the_graph_sees_function_level_imports():
  graph = import_graph()
  assert "avtca_jax.tfds_source" in graph["avtca_jax.data_sources"]
  assert "avtca_jax.input_pipeline" in graph["avtca_jax.tfds_source"]  # imported inside TfdsSource.__init__
  assert "avtca_jax.bundled" in graph["avtca_jax.datasets"]  # inside Dataset.builder


def test_no_import_cycles():
  assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
  cycles = find_cycles(import_graph())
  assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
