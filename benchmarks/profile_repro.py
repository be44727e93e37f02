"""Profile a cold ``dvc repro``: where each stage's wall time goes.

Clones the repository's committed HEAD into a temporary folder (no data, no DVC cache, no
MLflow store, no runs: cold), runs ``dvc repro`` there with ``M7_PROFILE`` set, and prints one
row per stage: its wall time as DVC ran it, split into process start and imports, Ray start,
the stage's own work, and the rest (Ray and interpreter shutdown, DVC hashing and caching).

    python benchmarks/profile_repro.py                 # the committed HEAD, ~30 min on 2 cores
    python benchmarks/profile_repro.py --keep /tmp/p   # keep the clone (then: dvc status there)
    python benchmarks/profile_repro.py --json out.json # also write the rows
    python benchmarks/profile_repro.py --here          # in this checkout (cold only if it has no
                                                       # data/, models/, .runs/ or mlflow.db yet)

Run nothing else meanwhile: two processes on 2 cores slow each other down.

The same machine runs the same code up to 1.5x slower at some hours (shared hosts): before and
after the repro a speed probe times a fixed small training workload (a conv net on 8x8 images),
so that two profiles compare by the ratio of their probes (``--probe-only``: the probe alone).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNING = re.compile(r"Running stage '(?:[^':]+:)?([^':]+)'")  # stages/<algo>/dvc.yaml:train-<algo> -> its name


def repro(clone: Path, profile: Path) -> tuple[list[tuple[str, float]], float, int]:
    """Run ``dvc repro`` in ``clone``; return (stage, seconds) in run order, the total and the exit code."""
    env = {**os.environ, "M7_PROFILE": str(profile), "PYTHONUNBUFFERED": "1"}
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(var, None)
    spans: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    current, since = None, t0
    with subprocess.Popen(["dvc", "repro"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            m = RUNNING.search(line)
            if m:
                now = time.perf_counter()
                if current:
                    spans.append((current, now - since))
                current, since = m.group(1), now
    end = time.perf_counter()
    if current:
        spans.append((current, end - since))
    return spans, end - t0, proc.returncode


PROBE = """
import sys, time, torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1),
                          torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
                          torch.nn.Flatten(), torch.nn.Linear(64 * 16, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x, y = torch.rand(128, 1, 8, 8), torch.randint(0, 10, (128,))
for i in range(int(sys.argv[1]) + 20):
    if i == 20:
        t0 = time.perf_counter()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
print(time.perf_counter() - t0)
"""


def speed_probe(steps: int = 300) -> float:
    """Seconds of a fixed small training workload in a fresh process: the machine's speed now."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(steps)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def table(spans: list[tuple[str, float]], entries: list[dict], total: float) -> list[dict]:
    rows = []
    for (stage, span), entry in zip(spans, entries):
        rows.append({"stage": stage, "wall_s": span, "start_imports_s": entry["start_imports_s"],
                     "ray_start_s": entry["ray_start_s"], "work_s": entry["work_s"],
                     "other_s": max(span - entry["total_s"], 0.0)})
    cols = ("wall_s", "start_imports_s", "ray_start_s", "work_s", "other_s")
    print(f"\n{'stage':28s} " + " ".join(f"{c[:-2]:>13s}" for c in cols))
    for r in rows:
        print(f"{r['stage']:28s} " + " ".join(f"{r[c]:13.1f}" for c in cols))
    sums = {c: sum(r[c] for r in rows) for c in cols}
    print(f"{'sum of stages':28s} " + " ".join(f"{sums[c]:13.1f}" for c in cols))
    by_kind: dict[str, float] = {}
    for r in rows:
        kind = re.split(r"[@-]", r["stage"])[0]
        by_kind[kind] = by_kind.get(kind, 0.0) + r["wall_s"]
    print("by stage kind: " + ", ".join(f"{k} {v:.0f}s" for k, v in by_kind.items()))
    print(f"dvc repro total: {total:.1f}s ({total / 60:.1f} min), {len(rows)} stages; "
          f"outside the stages (DVC start, lock, status): {total - sums['wall_s']:.1f}s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="clone here and keep it (must not exist)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--here", action="store_true", help="run in this checkout instead of a clone")
    parser.add_argument("--probe-only", action="store_true", help="time the speed probe, run nothing else")
    args = parser.parse_args()
    if args.probe_only:
        print(f"speed probe: {speed_probe():.2f}s")
        return
    if args.here:
        clone = REPO
    else:
        clone = args.keep or Path(tempfile.mkdtemp(prefix="m7-profile-")) / "repo"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    profile = Path(tempfile.mkdtemp(prefix="m7-profile-")) / "profile.jsonl"
    profile.unlink(missing_ok=True)
    try:
        probe = [speed_probe()]
        spans, total, code = repro(clone, profile)
        probe.append(speed_probe())
        entries = [json.loads(x) for x in profile.read_text().splitlines()] if profile.exists() else []
        if len(entries) != len(spans):
            print(f"warning: {len(spans)} stages ran, {len(entries)} wrote a profile line", file=sys.stderr)
        rows = table(spans, entries, total)
        print(f"speed probe (a fixed workload; compare profiles by its ratio): {probe[0]:.2f}s before, "
              f"{probe[1]:.2f}s after")
        if args.json:
            args.json.write_text(json.dumps({"total_s": total, "probe_s": probe, "stages": rows}, indent=2) + "\n")
        if code:
            raise SystemExit(f"dvc repro failed with exit code {code}")
    finally:
        shutil.rmtree(profile.parent, ignore_errors=True)
        if not args.keep and not args.here:
            shutil.rmtree(clone.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
