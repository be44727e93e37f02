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
