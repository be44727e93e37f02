"""Every stage an error message tells the user to run is a stage of the pipeline files, named as DVC's
command line takes it (static, seconds)."""

from __future__ import annotations

import re

import pytest
import yaml

from components.data.manifest import DataError
from components.data.shards import iter_shard, preprocess_stage, rebuild_hint
from tests.conftest import REPO

# `dvc repro [--force|-f] [-s] <stage>` in the source, <stage> a name in the top dvc.yaml or
# stages/<algo>/dvc.yaml:<name>; it may hold {f-string fields} or <placeholders>.
NAME = r"[a-z][\w-]*(?:(?:\{[^}]*\}|<[\w-]+>)[\w-]*)*"
SUGGESTION = re.compile(rf"dvc repro (?:--force |-f )?(?:-s )?((?:stages/[^\s/`]+/dvc\.yaml:)?{NAME})")


def _stages() -> set[str]:
    """Every stage as `dvc repro` names it: ``register-resnet``, ``stages/resnet/dvc.yaml:train-resnet``."""
    found = set()
    for path in [REPO / "dvc.yaml", *(REPO / "stages").glob("*/dvc.yaml")]:
        file = path.relative_to(REPO).as_posix()
        for name in yaml.safe_load(path.read_text())["stages"]:
            found.add(name if file == "dvc.yaml" else f"{file}:{name}")
    return found


def _suggestions() -> list[tuple[str, str]]:
    found = []
    for path in sorted([*(REPO / "components").rglob("*.py"), *(REPO / "pipelines").rglob("*.py")]):
        for match in SUGGESTION.finditer(path.read_text()):
            found.append((f"{path.relative_to(REPO)}", match.group(1)))
    return found


def test_every_stage_a_message_suggests_exists_in_dvc_yaml():
    stages, found = _stages(), _suggestions()
    # The scan finds the messages: one of every kind of stage the messages name (the shard reader's
    # `dvc repro {preprocess_stage(...)}` is checked below, with real directories).
    assert {s.rpartition(":")[2].split("-")[0] for _, s in found} >= {"ingest", "preprocess", "tune", "register"}, found
    for where, stage in found:
        # A field or placeholder stands for a dataset or algorithm name: any name of a stage of that kind.
        pattern = re.sub(r"\\\{[^}]*\\\}|<[\w-]+>", r"[\\w-]+", re.escape(stage))
        assert any(re.fullmatch(pattern, s) for s in stages), f"{where}: suggests `dvc repro {stage}`, no such stage"


def test_a_scan_would_catch_a_stage_that_is_gone_or_in_another_file():
    stale = SUGGESTION.search('raise DataError(f"{path}: re-create it with `dvc repro --force preprocess`")').group(1)
    assert stale == "preprocess" and stale not in _stages()
    # tune lives in stages/<algo>/dvc.yaml: its bare name is not what `dvc repro` takes
    bare = SUGGESTION.search("run `dvc repro tune-resnet` first").group(1)
    assert bare == "tune-resnet" and bare not in _stages() and f"stages/resnet/dvc.yaml:{bare}" in _stages()


@pytest.mark.parametrize("dataset", ["digits", "translation", "community"])
def test_a_bad_shard_names_its_own_preprocess_stage(dataset):
    shard_dir = REPO / "data" / "shards" / dataset
    assert preprocess_stage(shard_dir) == f"preprocess-{dataset}" and f"preprocess-{dataset}" in _stages()
    with pytest.raises(DataError, match=re.escape(rebuild_hint(shard_dir))):
        next(iter_shard(shard_dir / "train-999999.tar.gz"))
    assert preprocess_stage("/tmp/pipeline-shards/0123abcd") == "preprocess-<dataset>"  # a copy names none
