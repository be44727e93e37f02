#!/usr/bin/env bash
# Writes .whl: the packages the device machine's image lacks, as cp312 manylinux wheels for
# `benchmarks/gpu_session.sh` (the image has torch, numpy, pandas, pyarrow, aiohttp, protobuf,
# msgpack, click, filelock, pyyaml, requests, torch-geometric). Ray's wheel (79 MB) loses its Java
# jars and dashboard front end (45 MB left) to fit the 64 MiB a device call carries.
# Versions are this machine's (pip list), so the device runs what CI tests.
set -eu
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .whl && mkdir .whl
version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$1" "$2"
}
tmp=$(mktemp -d)
download "$tmp" "ray==$(version ray)"
for name in jsonschema jsonschema-specifications referencing rpds-py tensorboardX pydantic pydantic_core \
            annotated-types typing-inspection typing_extensions webdataset braceexpand num2words; do
  download .whl "$name==$(version "$name")"
done
python3 - "$tmp"/ray-*.whl <<'PY'
import sys, zipfile
from pathlib import Path
src = Path(sys.argv[1])
drop = ("ray/jars/", "ray/dashboard/client/")
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(Path(".whl") / src.name, "w", zipfile.ZIP_DEFLATED) as zo:
    for info in zi.infolist():
        if info.filename.startswith(drop):
            continue
        data = zi.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(f"{line}\n" for line in data.decode().splitlines() if not line.startswith(drop)).encode()
        zo.writestr(info, data)
PY
rm -rf "$tmp"
du -sh .whl
