"""The project's own imports form no circle: a module that a family or dataset imports never
imports the registries back (an AST walk of every import, at module level or in a function,
the way pipelines/dag.py reads them for dvc.yaml)."""

from pathlib import Path

from pipelines import dag

ROOT = Path(__file__).resolve().parents[1]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    graph = {}
    for package in dag.PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = dag.module_name(path, root)
            graph[name] = {dag.module_name(dag.module_file(m, root), root)
                           for m in dag.imported_modules(path, root)} - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_project_imports_form_no_circle():
    graph = import_graph()
    assert {"components.config", "components.params", "components.data.shards", "pipelines.train"} <= set(graph)
    assert circles(graph) == []
    # The dataclasses are a leaf; shards are written without the reader.
    assert graph["components.config"] == set()
    assert "components.data.shards" not in graph["components.data.writer"]
    # The reader knows no data type: it imports no dataset module and none of their batching; each
    # dataset module brings its own batcher (images: decode, augment; text: token batches; graphs: the sampler).
    data_modules = {f"components.data.{m}" for m in ("images", "translation", "graphs", "captions", "transforms",
                                                     "batching", "features", "tokenizer")}
    assert not graph["components.data.shards"] & data_modules
    # The train stage knows the sweep only through its winner (best.yaml): the sweep's code is tune's.
    sweep = {f"components.training.{m}" for m in ("sweep", "sweep_record", "tune_run")}
    assert not graph["pipelines.train"] & sweep and not graph["components.training.launch"] & sweep


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_project_types_behind_type_checking():
    """An import under ``if TYPE_CHECKING`` is a circle the graph above cannot see (dvc.yaml's deps
    skip them): a part that needs a caller's type describes it (a ``Protocol``) instead."""
    import ast

    hidden = []
    for package in dag.PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.If) and dag._is_type_checking(node):
                    hidden += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(node)
                               if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").split(".")[0]
                                                                     in dag.PACKAGES)]
    assert hidden == []


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for m in graph.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_the_shard_reader_knows_no_data_type():
    """The reader (list, verify, deal, shuffle, batch by a batcher it is handed) reaches neither
    the dataset registry nor a dataset module: ``components.data.registry.open_split`` composes
    them. The ``components.data`` package, which every module of it imports first, imports nothing."""
    from components.data.registry import DATASETS

    graph = import_graph()
    assert graph["components.data"] == set()
    reached = reach(graph, "components.data.shards")
    assert "components.data.registry" not in reached and not reached & set(DATASETS.values()), sorted(reached)
    assert "components.data.transforms" not in reached
    # ... while the registry hands each split the batcher of the module that wrote it.
    assert "components.data.shards" in reach(graph, "components.data.registry")
