"""The pipeline files (dvc.yaml, stages/<algo>/dvc.yaml) are derived from the code's imports, and
`dvc status` then names exactly the stages whose code changed (real DVC in a temporary repository)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import yaml

from pipelines import dag, freshness
from tests.conftest import REPO, copy_project

PER_ALGO = ("train", "tune", "evaluate", "register")


def test_the_pipeline_files_are_what_the_dag_module_writes(repo_params):
    assert dag.on_disk(REPO) == dag.render(repo_params), \
        "the pipeline files are out of date: run `python -m pipelines.dag` and commit them"


def test_an_algorithm_s_tune_train_evaluate_live_in_its_own_file_run_from_the_top(repo_params):
    rendered = dag.render(repo_params)
    assert set(rendered) == {"dvc.yaml", *(f"stages/{a}/dvc.yaml" for a in repo_params["algorithms"])}
    top = yaml.safe_load(rendered["dvc.yaml"])["stages"]
    assert {n.split("-")[0] for n in top} == {"ingest", "preprocess", "register", "compare"}
    own = yaml.safe_load(rendered["stages/resnet/dvc.yaml"])["stages"]
    assert list(own) == ["tune-resnet", "train-resnet", "evaluate-resnet"]
    assert all(stage["wdir"] == "../.." for stage in own.values())
    assert dag.address("train-resnet") == "stages/resnet/dvc.yaml:train-resnet" and dag.address("register-resnet") == \
        "register-resnet"


def test_an_algorithm_gone_from_params_takes_its_file_and_lock_along(tmp_path, repo_params):
    root = copy_project(tmp_path / "repo", repo_params, with_dvc=True)
    (root / "stages/gnn_karate/dvc.lock").write_text("schema: '2.0'\n")
    fewer = json.loads(json.dumps(repo_params))
    for section in ("algorithms", "train", "tune"):
        del fewer[section]["gnn_karate"]
    (root / "params.yaml").write_text(yaml.safe_dump(fewer, sort_keys=False))
    (root / ".dvc/tmp").mkdir(parents=True)
    reason = freshness.stale(root)  # what a stage DVC started now would stop with
    assert reason and "gone: " in reason and all(f"{s}-gnn_karate" in reason for s in PER_ALGO), reason
    dag.write(fewer, root)
    assert not (root / "stages/gnn_karate").exists() and freshness.stale(root) is None


def test_closure_follows_function_level_imports_and_enters_registries_by_name(repo_params):
    deps = {(stage, algo): set(dag.code_deps(stage, repo_params, algo)) for stage in PER_ALGO
            for algo in ("resnet", "gan", "clip")}
    for files in deps.values():  # reached only through imports inside functions, or shared by all
        assert {"components/config.py", "components/models/__init__.py", "components/data/registry.py"} <= files
    assert "components/models/resnet.py" in deps["train", "clip"]  # CLIP's ResNet image tower
    assert "components/evaluation/generative.py" in deps["train", "gan"]  # val FID every epoch
    assert "components/models/gan.py" not in deps["train", "resnet"]  # other families stay out
    assert "components/models/clip.py" not in deps["train", "resnet"]
    assert {"components/models/gan.py", "components/serving.py", "components/pyfunc_entry.py"} <= deps["register", "gan"]
    ingest = set(dag.code_deps("ingest", repo_params, "translation"))
    assert "components/data/translation.py" in ingest and "components/data/images.py" not in ingest


def test_closure_ignores_type_checking_imports_and_resolves_relative_ones(tmp_path):
    pkg = tmp_path / "components"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py", "sub/b.py", "c.py", "d.py"):
        (pkg / name).write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from components import d\n"
                              "def f():\n    from .sub import b\n    import components.c\n")
    assert dag.closure(["components.a"], tmp_path) == [
        "components/__init__.py", "components/a.py", "components/c.py", "components/sub/__init__.py",
        "components/sub/b.py"]


def _fake_outputs(root: Path, stages: dict) -> None:
    """Stand-ins for every stage output, so `dvc commit` can record the DAG without running it."""
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                path = root / (entry if isinstance(entry, str) else next(iter(entry)))
                if path.suffix in (".json", ".csv", ".png", ".yaml"):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}" if path.suffix == ".json" else "x")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "placeholder").write_text("x")


def _changed(root: Path) -> set[str]:
    """The stages `dvc status` reports, by name (DVC prefixes those of stages/<algo>/dvc.yaml with it)."""
    return set(_changed_deps(root))


def _changed_deps(root: Path) -> dict[str, dict]:
    """What one `dvc status` reports, by stage name: each changed dependency (a file, or
    ``params.yaml`` with the declared keys that changed), so that several edits made at once
    are told apart by the stages each one re-runs."""
    out = subprocess.run(["dvc", "status", "--json"], cwd=root, capture_output=True, text=True, check=True).stdout
    report: dict[str, dict] = {}
    for address, reasons in json.loads(out).items():
        deps = report.setdefault(address.rpartition(":")[2], {})
        for reason in reasons:
            assert set(reason) == {"changed deps"}, (address, reason)  # outputs stand as committed
            deps.update(reason["changed deps"])
    return report


def _rerun_by(report: dict[str, dict], dep: str) -> set[str]:
    """The stages that re-run for a change of ``dep``: a file, or a parameter of params.yaml (a
    stage that declares it, or a section around it or inside it)."""
    if dep.endswith(".py"):
        return {stage for stage, deps in report.items() if dep in deps}
    return {stage for stage, deps in report.items()
            if any(key == dep or dep.startswith(key + ".") or key.startswith(dep + ".") for key in deps.get("params.yaml", {}))}


def _on_disk_stages(root: Path) -> dict[str, dict]:
    return {name: stage for text in dag.on_disk(root).values() for name, stage in yaml.safe_load(text)["stages"].items()}


def test_dvc_status_reports_exactly_the_stages_whose_code_changed(tmp_path, repo_params):
    root = copy_project(tmp_path / "repo", repo_params, with_dvc=True)
    stages = _on_disk_stages(root)
    _fake_outputs(root, stages)
    for cmd in (["dvc", "init", "-q", "--no-scm"], ["dvc", "config", "core.analytics", "false"],
                ["dvc", "commit", "-q", "-f"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    assert _changed(root) == set()

    # Every edit at once, one `dvc status` (about 5 s a call on 2 cores), each told apart by the file
    # a stage reports changed.
    edited = ["components/models/resnet.py", "components/models/gan.py", "components/evaluation/generative.py",
              "components/config.py", "components/data/translation.py", "components/data/graphs.py",
              "components/data/batching.py", "components/training/sweep.py"]
    originals = {rel: (root / rel).read_text() for rel in edited}
    try:
        for rel, text in originals.items():
            (root / rel).write_text(text + "\n# edited\n")
        report = _changed_deps(root)
    finally:
        for rel, text in originals.items():
            (root / rel).write_text(text)

    def edit(rel: str) -> set[str]:
        reported = _rerun_by(report, rel)
        # What DVC reports is what the DAG module derives: both read the same import closure.
        assert reported == {name for name, s in stages.items() if rel in s["deps"]}, rel
        return reported

    # A family file: its own four stages, and CLIP's, whose image tower is the ResNet.
    assert edit("components/models/resnet.py") == {f"{s}-{a}" for s in PER_ALGO for a in ("resnet", "clip")}
    assert edit("components/models/gan.py") == {f"{s}-gan" for s in PER_ALGO}
    # The generative evaluator: evaluate scores with it, and the GAN and diffusion train on its val FID.
    generative = edit("components/evaluation/generative.py")
    assert {f"train-{a}" for a in ("gan", "diffusion")} <= generative and "train-resnet" not in generative
    # Shared code: every stage that runs it, each train stage included.
    assert {f"train-{a}" for a in repo_params["algorithms"]} <= edit("components/config.py")
    translation = edit("components/data/translation.py")
    assert {"ingest-translation", "preprocess-translation", "train-transformer"} <= translation
    assert "train-resnet" not in translation
    # The reader knows no data type: the graph sampler re-runs exactly the graph datasets and algorithms,
    # token batching exactly the translation ones.
    graph_data = {"community", "karate", "graph_families", "papers"}
    assert edit("components/data/graphs.py") == {f"{s}-{d}" for s in ("ingest", "preprocess") for d in graph_data} | {
        f"{s}-{a}" for s in PER_ALGO for a in ("gnn", "gnn_graphs", "gnn_karate", "gnn_hetero")}
    assert edit("components/data/batching.py") == {"ingest-translation", "preprocess-translation"} | {
        f"{s}-transformer" for s in PER_ALGO}
    # The sweep's code re-runs the sweeps; train follows only through best.yaml, when the winner changes.
    assert edit("components/training/sweep.py") == {f"tune-{a}" for a in repo_params["algorithms"]}


def test_params_rerun_the_stages_that_read_them_and_a_stale_dvc_yaml_stops_a_stage(tmp_path, repo_params):
    """tune -> train: the sweep depends on the train keys its trials read, never on train's epochs;
    train depends on the winner's file, and only with train.<algo>.tuned; algorithms.<algo> is
    every stage's of it. A dvc.yaml that lags params.yaml stops the stage DVC runs."""
    root = copy_project(tmp_path / "repo", repo_params, with_dvc=True)
    stages = _on_disk_stages(root)
    assert "models/resnet/tune/best.yaml" in stages["train-resnet"]["deps"]
    assert "train.resnet.epochs" not in stages["tune-resnet"]["params"] and "train.resnet.lr" in stages["tune-resnet"]["params"]
    _fake_outputs(root, stages)
    for cmd in (["dvc", "init", "-q", "--no-scm"], ["dvc", "config", "core.analytics", "false"],
                ["dvc", "commit", "-q", "-f"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    params = (root / "params.yaml").read_text()

    # Every change at once, one `dvc status`, each told apart by the keys a stage reports changed.
    changes = {"train.resnet.epochs": 41, "train.resnet.num_workers": 2, "tune.resnet.seed": 1, "train.resnet.lr": 0.2,
               "algorithms.resnet.dataset": "translation", "register.min_improvement": 0.5}
    raw = yaml.safe_load(params)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        assert node[last] != value, path  # a change indeed
        node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        report = _changed_deps(root)
    finally:
        (root / "params.yaml").write_text(params)

    def with_params(path: str) -> set[str]:
        assert path in changes
        return _rerun_by(report, path)

    assert with_params("train.resnet.epochs") == {"train-resnet"}
    assert with_params("train.resnet.num_workers") == {"train-resnet"}
    assert with_params("tune.resnet.seed") == {"tune-resnet"}  # train follows only if best.yaml changes
    assert with_params("train.resnet.lr") == {"train-resnet", "tune-resnet"}  # params.yaml's own trial
    # Which family and dataset: every stage of the algorithm reads them.
    assert with_params("algorithms.resnet.dataset") == {f"{s}-resnet" for s in PER_ALGO}
    assert with_params("register.min_improvement") == {f"register-{a}" for a in repo_params["algorithms"]}

    # A params.yaml edited without `python -m pipelines.dag`: the first stage DVC runs stops at once,
    # with one line that says what to run, before any work.
    moved = yaml.safe_load(params)
    moved["algorithms"]["resnet"]["dataset"] = "translation"
    (root / "params.yaml").write_text(yaml.safe_dump(moved, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_STAGE", "DVC_ROOT")}
    started = time.monotonic()
    out = subprocess.run(["dvc", "repro", "-s", dag.address("tune-resnet")], cwd=root, capture_output=True, text=True, env=env)
    took = time.monotonic() - started
    assert out.returncode != 0 and "Traceback" not in out.stderr + out.stdout
    line = next(x for x in out.stderr.splitlines() if "out of date" in x)
    assert line.startswith(f"error: {freshness.MESSAGE}") and "differ: tune-resnet" in line, line
    assert took < 30, took
    (root / "params.yaml").write_text(params)
    untuned = yaml.safe_load(params)
    untuned["train"]["resnet"]["tuned"] = False
    assert "models/resnet/tune/best.yaml" not in dag.stages(untuned, root)["train-resnet"]["deps"]
