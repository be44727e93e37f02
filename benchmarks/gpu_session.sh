#!/usr/bin/env bash
# The GPU checks of one device session, in two calls that fit its 15 minutes:
#   bash benchmarks/gpu_session.sh eager      # data written in the background while `pytest -m gpu` runs,
#                                             # then bench_gpu.py's eager rows (about 5 min on an H100)
#   bash benchmarks/gpu_session.sh compiled   # the compiled rows, on the data the first call left
# Logs go to $OUT (the device tool's folder) or ./gpu-logs. Packages the GPU image lacks travel as
# wheels in .whl (webdataset, braceexpand, num2words).
set -u
stage=${1:?eager or compiled}
out=${OUT:-gpu-logs}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD}
work=/tmp/bench-gpu-data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
if [ "$stage" = eager ]; then
  python3 benchmarks/bench_gpu.py --prepare-only --workdir $work > "$out/prepare.log" 2>&1 &
  prep=$!
  timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4 tests/components/training/test_gpu.py \
    2>&1 | tee "$out/pytest_gpu.log" | tail -25
  wait $prep; cat "$out/prepare.log"
  timeout 300 python3 benchmarks/bench_gpu.py --modes eager --workdir $work 2>&1 | tee "$out/bench_eager.log"
else
  timeout 420 python3 benchmarks/bench_gpu.py --modes compiled --workdir $work 2>&1 | tee "$out/bench_compiled.log"
fi
