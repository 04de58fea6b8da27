#!/usr/bin/env bash
# The GPU check in one command, within 8 minutes: installs the carried pure-Python wheels
# (scripts/gpu_wheels.sh makes them on the CPU machine) when pyro is missing, runs the CUDA
# tests (pytest -m cuda), then the cost benchmark (benchmarks/gpu_cost.py). Everything goes
# to one folder: env.txt, cuda_tests.log/.xml, gpu_cost.log/.json.
#
#   bash scripts/gpu_check.sh [--cpu-smoke] [OUT_DIR]
#
# OUT_DIR: default $OUT when set, else gpu_check_out/. --cpu-smoke: the benchmark's tiny CPU
# shape (the test suite runs it; the CUDA tests then skip). Environment: PYTHON (python3),
# BSLORA_GPU_WHEELS (gpu_wheels), BSLORA_GPU_BENCH_ARGS (extra benchmark flags).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=()
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE=(--cpu-smoke); shift; fi
OUT_DIR=${1:-${OUT:-gpu_check_out}}
PYTHON=${PYTHON:-python3}
WHEELS=${BSLORA_GPU_WHEELS:-gpu_wheels}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c "import pyro" 2>/dev/null; then
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "pyro-ppl is missing and $WHEELS/ holds no wheels: run scripts/gpu_wheels.sh" \
      "on the CPU machine and carry $WHEELS/ along" | tee "$OUT_DIR/env.txt"
    exit 2
  fi
  SITE=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl || exit 2
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"
  "$PYTHON" - <<'PY'
import platform, torch, transformers, peft, pyro
cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"python {platform.python_version()} torch {torch.__version__} (cuda {torch.version.cuda})"
      f" transformers {transformers.__version__} peft {peft.__version__} pyro {pyro.__version__}")
print(f"device: {cuda}")
PY
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -rs \
  --junitxml "$OUT_DIR/cuda_tests.xml" 2>&1 | tee "$OUT_DIR/cuda_tests.log"
TESTS=${PIPESTATUS[0]}

# shellcheck disable=SC2086  # BSLORA_GPU_BENCH_ARGS is a list of flags
timeout 300 "$PYTHON" benchmarks/gpu_cost.py "${SMOKE[@]}" --out "$OUT_DIR/gpu_cost.json" \
  ${BSLORA_GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT_DIR/gpu_cost.log"
BENCH=${PIPESTATUS[0]}

echo "cuda tests: exit $TESTS; cost benchmark: exit $BENCH (0: passed/finished, 124: timed out)" \
  | tee -a "$OUT_DIR/env.txt"
[ "$TESTS" -eq 0 ] && [ "$BENCH" -eq 0 ]
