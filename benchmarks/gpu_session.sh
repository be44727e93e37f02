#!/usr/bin/env bash
# The GPU checks of one device session, in two calls that fit its 15 minutes (start-up included):
#   bash benchmarks/gpu_session.sh first      # pytest -m gpu (every host sync of every family's step),
#                                             # bench_train.py (c)/(d) at 2 and 4 Ray DDP workers on the
#                                             # machine's CPU cores, then bench_gpu.py's eager rows (~7 min)
#   bash benchmarks/gpu_session.sh compiled   # bench_gpu.py's compiled rows (~5 min), on the data the
#                                             # first call left (written again on a fresh machine)
#   bash benchmarks/gpu_session.sh ddp        # bench_train.py (c)/(d) alone (~2.5 min)
# Carry: [".whl", "data/shards/digits"]. Results of 2026-12-04: benchmarks/results/h200-2026-12-04.
# Logs go to $OUT (the device tool's folder) or ./gpu-logs. Packages the GPU image lacks travel as
# wheels in .whl (ray without its Java jars and dashboard front end, its missing needs, webdataset,
# braceexpand, num2words); the digits shards travel as data/shards/digits (`dvc repro preprocess-digits`).
# MLflow does not travel (its server needs are large): bench_train runs with --no-mlflow there.
set -u
stage=${1:?first or compiled}
out=${OUT:-gpu-logs}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD} RAY_USAGE_STATS_ENABLED=0
work=/tmp/bench-gpu-data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import os, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cores', os.cpu_count())"
ddp() {  # CPU only, nothing else running: Ray Train DDP against plain DDP at 2 and 4 processes
  for w in 2 4; do
    timeout 100 python3 benchmarks/bench_train.py --no-mlflow --no-dashboard --paths cd --epochs 30 --workers $w \
      >> "$out/bench_train.log" 2>&1
  done
  grep -aE "^\(|^in-loop|^ResNet|Error|Exception" "$out/bench_train.log"
}
if [ "$stage" = ddp ]; then  # bench_train alone (a rerun of the first call's middle part)
  ddp
elif [ "$stage" = first ]; then
  python3 benchmarks/bench_gpu.py --prepare-only --workdir $work > "$out/prepare.log" 2>&1 &
  prep=$!
  timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4 tests/components/training/test_gpu.py \
    > "$out/pytest_gpu.log" 2>&1
  echo "pytest -m gpu: exit $?"; grep -E "passed|failed|host sync|^E +[0-9]+ x " "$out/pytest_gpu.log" | head -40
  wait $prep; tail -2 "$out/prepare.log"
  ddp
  timeout 200 python3 benchmarks/bench_gpu.py --modes eager --workdir $work > "$out/bench_eager.log" 2>&1
  tail -16 "$out/bench_eager.log"
else
  timeout 330 python3 benchmarks/bench_gpu.py --modes compiled --workdir $work > "$out/bench_compiled.log" 2>&1
  tail -12 "$out/bench_compiled.log"
fi
