"""Run keys: the same config, data and code resume one run; a code change starts a new one."""

from __future__ import annotations

from pipelines import lineage


def test_code_version_changes_with_any_python_file_under_the_paths(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    (tmp_path / "b.py").write_text("y = 2\n")
    first = lineage.code_version(tmp_path, ["pkg", "b.py"])
    assert first == lineage.code_version(tmp_path, ["b.py", "pkg"])  # order of paths does not matter
    (tmp_path / "pkg" / "notes.txt").write_text("edited")
    assert lineage.code_version(tmp_path, ["pkg", "b.py"]) == first  # only Python files count
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    second = lineage.code_version(tmp_path, ["pkg", "b.py"])
    assert second != first
    assert lineage.run_key("gan", {"lr": 1}, "data", first) != lineage.run_key("gan", {"lr": 1}, "data", second)


def git(root, *args):
    import subprocess

    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True).stdout


def test_git_commit_is_dirty_only_when_tracked_source_differs_from_it(tmp_path):
    import yaml

    root = tmp_path / "repo" / "project"  # the pipeline in a subfolder of its git repository
    (root / "components").mkdir(parents=True)
    (root / "metrics" / "eval").mkdir(parents=True)
    (root / "components" / "model.py").write_text("depth = 8\n")
    (root / "metrics" / "eval" / "resnet.json").write_text("{}\n")
    (root / "reports").mkdir()
    (root / "reports" / "card.md").write_text("# v1\n")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": {
        "cmd": "python x.py", "outs": [{"reports": {"cache": False}}], "metrics": ["metrics/eval/resnet.json"]}}}))
    git(tmp_path / "repo", "init", "-q")
    git(tmp_path / "repo", "add", "-A")
    git(tmp_path / "repo", "commit", "-qm", "code")
    head = git(root, "rev-parse", "HEAD").strip()
    assert lineage.git_commit(root) == head
    # A repro rewrites the lock file and the stages' outputs: still the committed code.
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (root / "metrics" / "eval" / "resnet.json").write_text('{"accuracy": 0.9}\n')
    (root / "reports" / "card.md").write_text("# v2\n")
    assert lineage.git_commit(root) == head
    # An edited source file (or params) is not what HEAD holds.
    (root / "components" / "model.py").write_text("depth = 20\n")
    assert lineage.git_commit(root) == head + "-dirty"
    assert lineage.git_commit(tmp_path) == "unknown"  # not a git repository
