#!/usr/bin/env bash
# The GPU smoke run: everything that only a GPU shows, in one command and under 10 minutes on one GPU.
#
#   bench/gpu_smoke.sh [--device cuda|cpu] [--out DIR]      (or: make gpu-smoke SMOKE_ARGS="--device cpu")
#
# 1. prints torch, CUDA and the device (env.txt);
# 2. runs every `gpu`-marked test with FACEJOBS_REQUIRE_GPU=1, so a broken CUDA setup fails instead of
#    skipping: the probe's CUDA branch, a worker pinned to cuda, out of memory on CUDA, the warp and
#    embed parity tests, and the resume tests across CPU and CUDA (tests/ml/test_gpu_resume.py);
# 3. the probe's matmul on the device in float32 and bfloat16 (probe.json);
# 4. every bench in bench/ with --quick --device DEVICE, each writing its JSON into DIR.
#
# `--device cpu` is the dry run for a machine without a GPU: the same steps end to end, the gpu tests
# skipped (not required), the benches on the CPU. Every step runs even when an earlier one failed;
# the summary (summary.json, and the last lines printed) says which failed, and the exit status is
# non-zero if any did. bench/load.py needs PostgreSQL and Redis on localhost, as the test suite does.
#
# Environment: SMOKE_PYTHON (default .venv/bin/python, else python3); SMOKE_STEP_TIMEOUT seconds per
# step (default 300 on cuda, 1800 on cpu, where two shared cores make the quick benches slow).
set -uo pipefail

DEVICE=cuda
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#*=}"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "--device must be cuda or cpu, got $DEVICE" >&2; exit 2 ;; esac

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY="${SMOKE_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT="${OUT:-bench/results/gpu-smoke-$DEVICE-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [ "$DEVICE" = cuda ]; then STEP_TIMEOUT="${SMOKE_STEP_TIMEOUT:-300}"; else STEP_TIMEOUT="${SMOKE_STEP_TIMEOUT:-1800}"; fi

STEPS=()
run_step() {  # run_step NAME COMMAND...: log to OUT/NAME.log, record status and seconds
  local name="$1"; shift
  local t0=$SECONDS rc
  echo "== $name: $*"
  timeout --kill-after=20 "$STEP_TIMEOUT" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  local seconds=$((SECONDS - t0))
  [ $rc -eq 124 ] && echo "== $name: timed out after ${STEP_TIMEOUT}s"
  echo "== $name: exit $rc in ${seconds}s"
  STEPS+=("$name $rc $seconds")
}

# 1. torch and the device
run_step env "$PY" - "$DEVICE" <<'EOF'
import json, platform, sys
import torch
want = sys.argv[1]
info = {
    "python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(), "device_count": torch.cuda.device_count(), "requested": want,
}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
print(json.dumps(info, indent=2))
if want == "cuda" and not torch.cuda.is_available():
    sys.exit("--device cuda, but torch sees no CUDA device: check the driver and CUDA_VISIBLE_DEVICES")
EOF
cp "$OUT/env.log" "$OUT/env.txt" 2>/dev/null
command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

# 2. the gpu-marked tests (the cross-device resume ones included); required on cuda, skipped on cpu
if [ "$DEVICE" = cuda ]; then
  run_step gpu-tests env FACEJOBS_REQUIRE_GPU=1 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider \
    --junitxml "$OUT/gpu-tests.xml" tests
else
  run_step gpu-tests env -u FACEJOBS_REQUIRE_GPU "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider \
    --junitxml "$OUT/gpu-tests.xml" tests
fi

# 3. the probe's matmul branch on the device, float32 and bfloat16
run_step probe "$PY" - "$DEVICE" "$OUT/probe.json" <<'EOF'
import json, sys
import torch
from workers.runners.probe import device_info, timed_matmul
device = torch.device(sys.argv[1])
n = 4096 if device.type == "cuda" else 512
out = {"device": device_info(device), "matmul": {d: timed_matmul(device, n, 5, d) for d in ("float32", "bfloat16")}}
with open(sys.argv[2], "w") as f:
    json.dump(out, f, indent=2)
for d, m in out["matmul"].items():
    print(f"{d:9} ran as {m['matmul_dtype']:9} n={n}: {m['gflops']:10.1f} GFLOP/s, relative error {m['matmul_rel_error']:.2e}")
EOF

# 4. every bench, quick, on the device
for bench in bench/*.py; do
  name="$(basename "$bench" .py)"
  [ "$name" = common ] && continue
  extra=()
  [ "$name" = invert_quality ] && extra=(--work "$OUT/invert_quality")
  run_step "bench-$name" "$PY" "$bench" --quick --device "$DEVICE" --json "$OUT/$name.json" "${extra[@]}"
done

failed=0
{
  echo "{\"device\": \"$DEVICE\", \"out\": \"$OUT\", \"steps\": ["
  sep=""
  for s in "${STEPS[@]}"; do
    read -r name rc seconds <<<"$s"
    printf '%s  {"step": "%s", "exit": %s, "seconds": %s}' "$sep" "$name" "$rc" "$seconds"
    sep=$',\n'
  done
  echo ""
  echo "]}"
} >"$OUT/summary.json"
echo
echo "gpu smoke on $DEVICE: results in $OUT"
for s in "${STEPS[@]}"; do
  read -r name rc seconds <<<"$s"
  if [ "$rc" = 0 ]; then status=ok; else status="FAILED (exit $rc)"; failed=1; fi
  printf '  %-22s %-18s %5ss\n' "$name" "$status" "$seconds"
done
exit $failed
