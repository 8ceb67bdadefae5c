#!/usr/bin/env bash
# The benchmark (rpn-lib bench) on a CUDA GPU, from a plain checkout, on a machine whose Python has a
# CUDA build of PyTorch but where rpn-lib is not installed and nothing can be downloaded:
#
#   scripts/bench_cuda.sh OUT_DIR [WHEEL_DIR]
#
# WHEEL_DIR holds wheels of the packages that Python lacks (rpn-lib needs numpy, scipy, nibabel,
# matplotlib and tqdm; the RetinaNet peer needs monai). They are installed into a temporary folder
# for this run only. rpn_lib is imported from the checkout. The synthetic cpu-small dataset, used
# for the accuracy check of fp16 against fp32, is generated into data/synth-cpu-small when missing.
# First it runs tests/test_gpu.py (the library's CUDA paths against the CPU's) when pytest can
# be imported, then the benchmark. It writes OUT_DIR/gpu-tests.log, OUT_DIR/bench-cuda.json,
# OUT_DIR/bench-cuda.md and OUT_DIR/bench-cuda.log, and exits non-zero if the tests failed.
# Wheels for a Python 3.12 without nibabel and monai, fetched on any machine with network:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d WHEEL_DIR nibabel==5.4.2 monai==1.6.1
# (where that Python has no pytest either, add pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
# pygments==2.21.0 packaging==26.4).
#
# Environment:
#   PYTHON       the interpreter (default: python3)
#   BENCH_ARGS   more rpn-lib bench options, e.g. "--repeats 10" or "--quick" (default: none)
#   BENCH_DEVICE the device (default: cuda; "cpu" runs the same steps on the CPU, as a dry run)
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUT_DIR [WHEEL_DIR]" >&2
    exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
py="${PYTHON:-python3}"
device="${BENCH_DEVICE:-cuda}"

if [[ $# -eq 2 ]]; then
    shopt -s nullglob
    wheels=("$2"/*.whl)
    shopt -u nullglob
    if [[ ${#wheels[@]} -eq 0 ]]; then
        echo "error: no .whl file in $2" >&2
        exit 2
    fi
    site="$(mktemp -d)"
    trap 'rm -rf "$site"' EXIT
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${wheels[@]}"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$repo"

"$py" - "$device" <<'EOF'
import sys
import torch
device = sys.argv[1]
print(f"python {sys.version.split()[0]}, torch {torch.__version__}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("error: torch sees no CUDA device (BENCH_DEVICE=cpu runs a dry run on the CPU)")
    print(f"GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
import rpn_lib.bench  # noqa: F401  (fails here, early, when a package is missing)
EOF

data=data/synth-cpu-small
if [[ ! -f $data/splits.json ]]; then
    echo "generating $data (the synthetic cpu-small dataset, seed 0) ..."
    "$py" -m rpn_lib synth --out "$data" --preset cpu-small --seed 0 --no-progress
fi

tests_rc=0
if "$py" -c "import pytest" 2>/dev/null; then
    echo "running tests/test_gpu.py on $device ..."
    RPN_LIB_TEST_DEVICE="$device" "$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 \
        | tee "$out/gpu-tests.log" || tests_rc=$?
else
    echo "pytest cannot be imported by $py: tests/test_gpu.py skipped (put its wheels in WHEEL_DIR)" \
        | tee "$out/gpu-tests.log"
fi

# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
"$py" -m rpn_lib bench --device "$device" --preset all --model models/ig-rpn-cpu-small/model.pt \
    --accuracy-data "$data" --out "$out/bench-cuda.json" --markdown "$out/bench-cuda.md" ${BENCH_ARGS:-} \
    2>&1 | tee "$out/bench-cuda.log"
if [[ $tests_rc -ne 0 ]]; then
    echo "error: tests/test_gpu.py failed (see $out/gpu-tests.log)" >&2
    exit "$tests_rc"
fi
