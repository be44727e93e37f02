"""bench_gpu.py runs end to end at smoke sizes on a CPU (its GPU figures need a GPU session),
so the script a GPU session will run cannot rot between sessions."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_benchmark_runs_at_smoke_sizes_and_prints_its_table():
    # Without the ablation rows (the same functions with one option flipped, 14 s of the 42 here).
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--smoke", "--no-compile",
                           "--no-ablations"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("samples/s")[-1]
    for row in ("plain, synthetic batch on the device, eager", "plain, shard reader (2 workers), eager",
                "pipeline loop, same reader, eager", "transformer", "diffusion"):
        assert row in table, proc.stdout[-3000:]
    assert "ResNet-50 eager: pipeline / plain time per image" in proc.stdout
