"""``python -m pipelines.stage``: a stage forked from a warm interpreter behaves as the process DVC
started would: same arguments, folder, environment, streams and exit; signals reach it; it dies
with its client; it sees the project's code as it is now. Real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = '''
import os, signal, sys, time
from components import marker
print("argv", sys.argv[1:], "cwd", os.getcwd(), "FOO", os.environ.get("FOO"), "warm", "torch" in sys.modules,
      "marker", marker.VALUE, flush=True)
print("on stderr", file=sys.stderr, flush=True)
mode = os.environ.get("MODE", "")
if mode != "sleep":
    open("pid", "w").write(str(os.getpid()))
if mode == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "sleep":
    try:
        open("pid", "w").write(str(os.getpid()))  # inside the try: a Ctrl-C from now on is caught
        time.sleep(60)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
sys.exit(int(os.environ.get("CODE", "0")))
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with a stage module (``probe.run``) and a project module it imports; its own
    server socket folder, so this module's tests share one server and nothing else does."""
    root = tmp_path_factory.mktemp("stage")
    (root / "probe").mkdir()
    (root / "probe" / "__init__.py").write_text("")
    (root / "probe" / "run.py").write_text(PROBE)
    (root / "components").mkdir()
    (root / "components" / "__init__.py").write_text("")
    (root / "components" / "marker.py").write_text("VALUE = 1\n")
    sockets = root / "sockets"
    sockets.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "M7_STAGE_SOCKET_DIR": str(sockets), "M7_STAGE_SERVER_IDLE": "20"}
    yield root, env
    for log in sockets.glob("*.log"):  # what the server did, on a failure
        print(log.read_text())


def stage(root: Path, env: dict, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.stage", "probe.run", "--flag", "x y"], cwd=root,
                          env={**env, **extra}, capture_output=True, text=True, timeout=120)


def test_a_stage_runs_forked_with_its_clients_arguments_folder_environment_and_streams(project):
    root, env = project
    first = stage(root, env, FOO="bar", CODE="3")
    assert first.returncode == 3, first.stderr
    assert f"argv ['--flag', 'x y'] cwd {root} FOO bar warm True marker 1" in first.stdout
    assert first.stderr.strip() == "on stderr"
    assert int((root / "pid").read_text()) != os.getpid()
    t0 = time.perf_counter()
    second = stage(root, env, CODE="0")
    warm_s = time.perf_counter() - t0
    assert second.returncode == 0 and "FOO None warm True" in second.stdout, second.stderr
    assert warm_s < 2.5, f"a warm stage took {warm_s:.1f} s to start and end"  # a cold interpreter takes ~3 s


def test_the_stage_sees_the_projects_code_as_it_is_now(project):
    root, env = project
    assert "marker 1" in stage(root, env).stdout
    (root / "components" / "marker.py").write_text("VALUE = 2\n")
    try:
        assert "marker 2" in stage(root, env).stdout  # the server keeps no project module
    finally:
        (root / "components" / "marker.py").write_text("VALUE = 1\n")


def test_a_stage_killed_by_a_signal_ends_its_client_by_the_same_signal(project):
    root, env = project
    done = stage(root, env, MODE="kill")
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_ctrl_c_reaches_the_stage_and_the_client_ends_as_interrupted(project):
    root, env = project
    (root / "pid").unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.stage", "probe.run"], cwd=root,
                            env={**env, "MODE": "sleep"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(root / "pid")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "interrupted" in out and "KeyboardInterrupt" in err
    assert proc.returncode == -signal.SIGINT


def test_a_stage_dies_with_its_client(project):
    root, env = project
    (root / "pid").unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.stage", "probe.run"], cwd=root,
                            env={**env, "MODE": "sleep"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(root / "pid")
    pid = int((root / "pid").read_text())
    proc.kill()  # as DVC's process group killed, or the machine's OOM killer
    proc.wait(timeout=10)
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), "the stage outlived its client"


def test_without_the_server_the_stage_runs_in_the_clients_process(project):
    root, env = project
    done = stage(root, env, M7_STAGE_SERVER="0", CODE="5")
    assert done.returncode == 5 and "warm False" in done.stdout, done.stderr
    assert int((root / "pid").read_text()) != os.getpid()


def test_a_real_stage_through_the_server_gives_a_clear_error_on_bad_input(project):
    """``pipelines.ingest`` with a dataset params.yaml lacks: one line, exit 2, as run directly."""
    root, env = project
    (root / "params.yaml").write_text(textwrap.dedent("""
        data: {}
        algorithms: {}
        train: {}
        tune: {}
        register: {min_improvement: 0.0}
    """))
    done = subprocess.run([sys.executable, "-m", "pipelines.stage", "ingest", "--dataset", "nope"], cwd=root,
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    direct = subprocess.run([sys.executable, "-m", "pipelines.ingest", "--dataset", "nope"], cwd=root,
                            env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == direct.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == direct.stderr.strip().splitlines()[-1]


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


RAY_STAGE = '''
import json
import psutil
import ray
from components.training import launch
from pipelines.layout import run_stage

def main():
    launch.init_ray(1, dashboard=False)
    procs = []
    for infos in ray._private.worker._global_node.all_processes.values():
        for info in infos:
            proc = psutil.Process(info.process.pid)
            procs += [proc, *proc.children(recursive=True)]
    json.dump({p.pid: " ".join(p.cmdline()) for p in procs}, open("ray_procs.json", "w"))

run_stage(main)
'''


def test_a_stage_that_started_a_local_ray_leaves_none_of_its_processes_behind(tmp_path):
    """The raylet's dashboard and runtime-env agents included: left behind, they held their ports
    and CPU for a minute or more, and the next stage's Ray took twice as long to start."""
    (tmp_path / "ray_probe").mkdir()
    (tmp_path / "ray_probe" / "__init__.py").write_text("")
    (tmp_path / "ray_probe" / "run.py").write_text(RAY_STAGE)
    # In the client's own process (the server's preloads cost more than this stage's work); a stage
    # forked by the server ends through the same run_stage.
    env = {**os.environ, "PYTHONPATH": str(REPO), "M7_STAGE_SERVER": "0"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "pipelines.stage", "ray_probe.run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    procs = {int(pid): cmd for pid, cmd in json.loads((tmp_path / "ray_procs.json").read_text()).items()}
    assert any("agent" in cmd for cmd in procs.values()), procs  # the raylet's agents were running
    deadline = time.time() + 5
    alive = procs
    while alive and time.time() < deadline:
        alive = {pid: cmd for pid, cmd in procs.items() if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)}
        time.sleep(0.1)
    assert not alive, f"left running after the stage ended: {alive}"
