#!/usr/bin/env bash
# The GPU check of issue 16, prepared to run once on a fresh GPU machine (GPU time is scarce:
# nothing here is interactive). From the repository root:
#
#   bash scripts/gpu_check.sh OUT_DIR            # installs .venv-gpu from this checkout, runs everything
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_PYTHON=.venv/bin/python bash scripts/gpu_check.sh /tmp/gpu-dry
#                                                # the CPU dry run: same steps, tiny sizes, no install
#
# Steps, each bounded by `timeout` and recorded in OUT_DIR/steps.tsv (a failed step does not stop
# the others, so one run yields every figure it can):
#   1. environment: nvidia-smi, torch / torchvision / CUDA versions, CPU count  -> env.txt
#   2. install (skipped when GPU_CHECK_PYTHON is given): python3 -m venv .venv-gpu; pip install -e '.[gpu-check]'
#   3. the GPU tests: pytest -m gpu                                               -> pytest-gpu.txt
#   4. clipfuse bench, ViT-B-32 then ViT-L-14, random weights (no hub), bf16: model only, CPU-decode
#      pipeline, device-decode pipeline (nvjpeg), the clip-retrieval-style baseline, full ingest,
#      in one run each                                                            -> bench-*.json / .txt
#   5. summary.md: the figures the issue asks for, with the goals next to them
#
# Environment: GPU_CHECK_DEVICE (cuda | cpu; default cuda), GPU_CHECK_PYTHON (use this interpreter,
# skip the install), GPU_CHECK_WORKERS (CPU decode threads / baseline processes; default: cores - 1),
# GPU_CHECK_STEP_TIMEOUT (seconds per step; default 240).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${1:-${OUT:-gpu-check-out}}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
STEP_TIMEOUT=${GPU_CHECK_STEP_TIMEOUT:-240}
CORES=$(nproc 2>/dev/null || echo 4)
WORKERS=${GPU_CHECK_WORKERS:-$((CORES > 2 ? CORES - 1 : 1))}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
STEPS="$OUT_DIR/steps.tsv"
printf 'step\texit\tseconds\n' >"$STEPS"
started_all=$(date +%s)

step() {  # step NAME LOGFILE COMMAND...: run bounded, record exit code and time, never abort the script
  local name=$1 log=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== $name: $*" | tee -a "$OUT_DIR/run.log"
  timeout --kill-after=10 "$STEP_TIMEOUT" "$@" >"$log" 2>"$log.err"
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$STEPS"
  echo "   -> exit $rc in $(($(date +%s) - t0)) s" | tee -a "$OUT_DIR/run.log"
  return 0
}

# 1-2. interpreter (install from the project's own files unless one is given)
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
  PY=$GPU_CHECK_PYTHON
else
  python3 -m venv .venv-gpu
  step install "$OUT_DIR/install.txt" .venv-gpu/bin/pip install -q -e '.[gpu-check]'
  PY=.venv-gpu/bin/python
fi
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host cores: $CORES; decode workers: $WORKERS; device: $DEVICE"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, torchvision, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('torchvision', torchvision.__version__, 'open_clip', open_clip.__version__)"
  git rev-parse HEAD 2>/dev/null | sed 's/^/commit: /'
} >"$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

# 3. the GPU tests (on the CPU dry run they skip, which proves they are collected)
step pytest-gpu "$OUT_DIR/pytest-gpu.txt" "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu_decode.py

# 4. the benches: one run per model, every phase side by side
if [ "$DEVICE" = cpu ]; then  # tiny: proves the commands and the summary, not the speed
  COMMON=(--device cpu --precision fp32 -b 8 --ingest-batch 16 -n 24 --unique-images 6 --workers 1 --load-workers 2
    --texts 32 --query-docs 0 --repeats 1)
  MODELS=(clipfuse-demo clipfuse-demo)
  NAMES=(vit-b-32 vit-l-14)
else
  COMMON=(--device cuda --precision bf16 --unique-images 256 --workers "$WORKERS" --load-workers "$WORKERS"
    --texts 4096 --query-docs 0 --repeats 2)
  MODELS=(ViT-B-32 ViT-L-14)
  NAMES=(vit-b-32 vit-l-14)
fi
for i in 0 1; do
  extra=()
  if [ "$DEVICE" != cpu ]; then
    if [ "${NAMES[$i]}" = vit-b-32 ]; then extra=(-b 1024 --ingest-batch 4096 -n 20000); else extra=(-b 512 --ingest-batch 2048 -n 8000); fi
  fi
  step "bench-${NAMES[$i]}" "$OUT_DIR/bench-${NAMES[$i]}.json" \
    "$PY" -m clipfuse.cli bench --model "${MODELS[$i]}" "${COMMON[@]}" "${extra[@]}" --json -q
done

# 5. the summary
"$PY" - "$OUT_DIR" <<'EOF' >"$OUT_DIR/summary.md" 2>"$OUT_DIR/summary.err"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
env = (out / "env.txt").read_text()
print("# GPU check (issue 16)\n")
print("```\n" + env.strip() + "\n```\n")
print("| model | model only img/s | device-decode pipeline img/s | CPU-decode pipeline img/s | baseline img/s | "
      "ingest docs/s | device / baseline | device / model only | ingest / model only (docs) |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ("vit-b-32", "vit-l-14"):
    path = out / f"bench-{name}.json"
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"| {name} | not measured ({type(e).__name__}: see {path.name}.err) |||||||")
        continue
    t, q = r["throughput"], r["ratios"]
    fmt = lambda v: "-" if v is None else f"{v:,.1f}"
    rat = lambda v: "-" if v is None else f"{v:.2f}"
    print(f"| {r['config']['model']} ({r['environment']['gpu'] or r['config']['device_resolved']}) | "
          f"{fmt(t['model_only_images_per_s'])} | {fmt(t['device_pipeline_images_per_s'])} | "
          f"{fmt(t['pipeline_images_per_s'])} | {fmt(t['baseline_images_per_s'])} | {fmt(t['ingest_documents_per_s'])} | "
          f"{rat(q['device_pipeline_vs_baseline'])} | {rat(q['device_pipeline_vs_model_only'])} | "
          f"{rat(q['ingest_vs_model_only_documents'])} |")
print("\nGoals: ViT-B-32 JPEG bytes -> vectors >= 12,000 img/s and >= 3x the baseline; "
      "ViT-L-14 end to end >= 0.90 of model only.")
print("\nSteps (exit code, seconds):\n\n```\n" + (out / "steps.tsv").read_text() + "```")
EOF
cat "$OUT_DIR/summary.md"
echo "figures in $OUT_DIR ($(($(date +%s) - started_all)) s in all)"
