"""The README and docs/ say what runs: their commands that can run here are run (or, for the
`dvc exp run -S` lines, applied to params.yaml and validated), their Python snippets parse and
import what they name, every stage they name exists, and every link points at a file."""

from __future__ import annotations

import ast
import copy
import importlib
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from components.params import load_all
from pipelines import dag
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _text(page) -> str:
    return page.read_text()


def _blocks(language: str) -> list[tuple[str, str]]:
    return [(page.name, m.group(1)) for page in PAGES
            for m in re.finditer(rf"```{language}\n(.*?)```", _text(page), re.S)]


def test_the_ci_runs_the_readmes_test_command_and_the_first_command_installs_and_repros():
    lines = _text(REPO / "README.md").splitlines()
    commands = [line.strip() for line in lines[:12] if line.startswith("    ")]
    install, test = commands[0], commands[1]
    assert install == 'pip install torch==2.13.0 && pip install -e ".[dev]" && dvc repro'
    assert test.endswith("python -m pytest -q --timeout 900")
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [test], ".ci/run must run exactly the README's test command"


def test_the_dag_check_the_readme_gives_passes():
    out = subprocess.run([sys.executable, "-m", "pipelines.dag", "--check"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _exp_settings() -> list[str]:
    found = []
    for page in PAGES:
        for line in _text(page).splitlines():
            if "dvc exp run" in line:
                words = shlex.split(re.split(r"[#`]", line.split("dvc exp run", 1)[1])[0])
                found += [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    return found


def test_every_dvc_exp_run_setting_names_a_key_of_params_yaml_and_a_valid_value(repo_params):
    settings = _exp_settings()
    assert len(settings) >= 2
    for setting in settings:
        key, _, value = setting.partition("=")
        raw = copy.deepcopy(repo_params)
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            assert isinstance(node, dict) and part in node, f"`-S {setting}`: {key} is not a key of params.yaml"
            node = node[part]
        assert last in node, f"`-S {setting}`: {key} is not a key of params.yaml"
        node[last] = yaml.safe_load(value)  # as DVC parses a -S value
        load_all(raw, algorithms=[parents[1]] if parents[0] in ("train", "tune") else None)


def test_every_yaml_snippet_is_valid_params(repo_params):
    snippets = [(page, text) for page, text in _blocks("yaml") if "data:" in text or "algorithms:" in text]
    assert snippets
    for page, text in snippets:
        raw = copy.deepcopy(repo_params)
        for section, entries in yaml.safe_load(text).items():
            raw.setdefault(section, {}).update(entries)
        load_all(raw)  # a typo in a documented key fails here, naming it


def test_every_python_snippet_parses_and_its_project_imports_resolve():
    snippets = _blocks("python")
    assert len(snippets) >= 5
    for page, text in snippets:
        tree = ast.parse(text, filename=page)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in ("components", "pipelines"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{page}: `from {node.module} import {alias.name}`: no such name"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)


def test_every_stage_named_exists_and_every_link_and_path_points_at_a_file():
    stages = {name if file == "dvc.yaml" else f"{file}:{name}"  # as `dvc repro` names them
              for file, text in dag.on_disk(REPO).items() for name in yaml.safe_load(text)["stages"]}
    for page in PAGES:
        text = _text(page)
        for stage in re.findall(r"dvc repro (?:--force |-f )?(?:-s )?((?:stages/[\w]+/dvc\.yaml:)?[a-z][\w]*-[\w-]+)", text):
            assert stage in stages, f"{page.name}: `dvc repro {stage}`: no such stage"
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (page.parent / link).exists(), f"{page.name}: link {link} points at nothing"
        for path in re.findall(r"`((?:components|pipelines|benchmarks|tests|infra)/[\w/.-]+\.(?:py|md|yaml))`", text):
            assert (REPO / path).exists(), f"{page.name}: {path} does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_pages_stay_short(page):
    limit = 200 if page.name == "README.md" else 250
    assert len(_text(page).splitlines()) <= limit, f"{page.name}: {len(_text(page).splitlines())} lines"
