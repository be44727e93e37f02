"""Every stage an error message tells the user to run is a stage of dvc.yaml (static, seconds)."""

from __future__ import annotations

import re

import pytest
import yaml

from components.data.manifest import DataError
from components.data.shards import iter_shard, preprocess_stage, rebuild_hint
from tests.conftest import REPO

# `dvc repro [--force|-f] <stage>` in the source; the stage may hold {f-string fields} or <placeholders>.
SUGGESTION = re.compile(r"dvc repro (?:--force |-f )?(?:-s )?([a-z][\w-]*(?:(?:\{[^}]*\}|<[\w-]+>)[\w-]*)*)")


def _stages() -> set[str]:
    return set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


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
    assert {s.split("-")[0] for _, s in found} >= {"ingest", "preprocess", "tune", "register"}, found
    for where, stage in found:
        # A field or placeholder stands for a dataset or algorithm name: any name of a stage of that kind.
        pattern = re.sub(r"\\\{[^}]*\\\}|<[\w-]+>", r"[\\w-]+", re.escape(stage))
        assert any(re.fullmatch(pattern, s) for s in stages), f"{where}: suggests `dvc repro {stage}`, no such stage"


def test_a_scan_would_catch_a_stage_that_is_gone():
    stale = SUGGESTION.search('raise DataError(f"{path}: re-create it with `dvc repro --force preprocess`")').group(1)
    assert stale == "preprocess" and stale not in _stages()


@pytest.mark.parametrize("dataset", ["digits", "translation", "community"])
def test_a_bad_shard_names_its_own_preprocess_stage(dataset):
    shard_dir = REPO / "data" / "shards" / dataset
    assert preprocess_stage(shard_dir) == f"preprocess-{dataset}" and f"preprocess-{dataset}" in _stages()
    with pytest.raises(DataError, match=re.escape(rebuild_hint(shard_dir))):
        next(iter_shard(shard_dir / "train-999999.tar.gz"))
    assert preprocess_stage("/tmp/pipeline-shards/0123abcd") == "preprocess-<dataset>"  # a copy names none
