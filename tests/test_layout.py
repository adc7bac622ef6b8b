"""The layout's rules: no import cycles among longjax's modules, no module outside the attention package (and
the config schema, which lists the allowed values) chooses behaviour by attention type, and the ops take arrays
and plain numbers, never a config."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).parents[1] / "longjax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(path): path for path in ROOT.rglob("*.py")}


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The longjax modules a module imports at its top level (imports inside functions run later, not at load)."""
  found = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:  # `from pkg import sub` names a submodule when there is one
        sub = f"{node.module}.{alias.name}"
        found.add(sub if sub in modules else node.module)
  return {name for name in found if name in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` (a path that ends where it starts), or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
      if nxt not in state:
        found = visit(nxt, path + [nxt])
        if found:
          return found
    state[node] = 2
    return None

  for start in sorted(graph):
    if start not in state:
      found = visit(start, [start])
      if found:
        return found
  return None


def test_cycle_finder_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
  modules = _modules()
  graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
  # A package's __init__ re-exporting its submodules is the package itself, not an edge back into it.
  graph = {name: {dep for dep in deps if not name.startswith(dep + ".")} for name, deps in graph.items()}
  assert _cycle(graph) is None


def test_only_the_attention_package_branches_on_the_attention_type():
  allowed = ("longjax/nn/attention/", "longjax/config")  # config.py, or the config/ package
  branch = re.compile(r"""attention\.type\s*(==|!=|in\b|not in\b)|\.type\s*==\s*["']""")
  offenders = [str(path.relative_to(ROOT.parent)) for path in ROOT.rglob("*.py")
               if not str(path.relative_to(ROOT.parent)).startswith(allowed) and branch.search(path.read_text())]
  assert not offenders


def test_no_op_imports_the_config():
  """longjax/ops are pure array functions: what a config says reaches them as arrays, numbers or functions."""
  modules = _modules()
  offenders = sorted(name for name, path in modules.items() if name.startswith("longjax.ops")
                     and any(dep == "longjax.config" or dep.startswith("longjax.config.")
                             for dep in _imports(path, set(modules)) | _all_imports(path)))
  assert not offenders


def _all_imports(path: pathlib.Path) -> set[str]:
  """Every module name an import statement anywhere in the file names (inside functions too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.update({node.module} | {f"{node.module}.{alias.name}" for alias in node.names})
  return found
