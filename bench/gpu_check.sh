#!/usr/bin/env bash
# The device check: one go, <= 10 minutes on a machine with one GPU and 16 cores, no internet.
#
#   bench/gpu_check.sh            # full: needs a CUDA GPU; refuses to run without one (exit 2)
#   bench/gpu_check.sh --smoke    # tiny sizes on the CPU: checks that every part runs (~minutes)
#
# Everything is generated (face-like JPEG clips, pipeline.synth videos) and every model is
# randomly initialised through open_clip (ViT-B/32 architecture), so nothing is downloaded.
# Each part is an existing bench run with device options; each prints ratios against a baseline
# measured in the same process:
#   1. training step at the paper's batch (48 clips x 16 frames, ViT-B/32, bf16) fed by the
#      train stage's data path from Parquet shards vs an in-memory batch, at 2, 4 and 8 Ray Data
#      CPUs (is the GPU starved?), with clips/s and the CPU-ms per clip the data path is given;
#   2. bf16 vs fp32 and the compiled vs eager image encoder at that batch (train.precision,
#      train.compile);
#   3. `predict` end to end on the GPU vs the bare forward;
#   4. preprocessing (the Ray Data job) with 1, 2, 4 and 8 workers;
#   5. the CPU data path per core vs pure JPEG decode (bench/data_path.py, 224 px), also in the
#      decode-only mode of train.augment.on_device, and augment_batch's cost per clip on the GPU;
#   6. `dferclip serve` with ViT-B/32 on the GPU and 8 decoder replicas: 8 concurrent clients vs
#      one at a time, and the same app decoding each clip once (Serve's own part).
#   (Part 1 feeds the step with the augmentation on the GPU: train.augment.on_device's default there.)
# The lines that carry a ratio are repeated at the end under "summary". Output also goes to
# $GPU_CHECK_LOG (default: gpu_check.log in the temp folder).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=python
MODE=full
case ${1:-} in
  --smoke) MODE=smoke ;;
  "") ;;
  *) echo "usage: bench/gpu_check.sh [--smoke]" >&2; exit 2 ;;
esac
# A busy machine can take longer than Ray's default to register the local node.
export RAY_raylet_start_wait_time_s=${RAY_raylet_start_wait_time_s:-120}
LOG=${GPU_CHECK_LOG:-${TMPDIR:-/tmp}/gpu_check.log}
: >"$LOG"

if [[ $MODE == full ]]; then
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "bench/gpu_check.sh: no CUDA GPU is visible to torch (torch.cuda.is_available() is False)." >&2
    echo "Run it on a GPU machine, or 'bench/gpu_check.sh --smoke' to check the script on the CPU." >&2
    exit 2
  fi
  DEV=cuda ARCH=ViT-B-32 BATCH=48 FRAMES=16 STEPS=6 CPUS=2,4,8 STORED=48 DISTINCT=48
  PRED=(--arch ViT-B-32 --repeats 10)
  PREP=(--workers 1,2,4,8 --clips 48 --frames 150 --repeat 2 --skip-memory)
  DATA=(--sizes 224 --clips 24 --repeats 5 --aug-device cuda)
  SERVE=(--device cuda --arch ViT-B-32 --set serve.decoders=8 --set serve.decoder_threads=1)
  LIMIT=150 LIMIT_COMPILE=210  # seconds per part; the compile part pays ViT-B/32's compilation
else
  DEV=cpu ARCH=dferclip-micro BATCH=2 FRAMES=8 STEPS=2 CPUS=1,2 STORED=12 DISTINCT=2
  PRED=(--arch dferclip-micro --repeats 1 --frames 8)
  PREP=(--workers 1,2 --clips 2 --frames 20 --repeat 1 --skip-memory)
  DATA=(--sizes 224 --clips 2 --frames 16 --repeats 1)
  SERVE=(--requests 4 --clients 2 --no-floor)
  LIMIT=600 LIMIT_COMPILE=600
fi

status=0
part() {  # part "title" command...: run one bench under a time limit ($LIMIT s), output to the console and the log
  local title=$1 limit=${PART_LIMIT:-$LIMIT}
  shift
  echo "== $title" | tee -a "$LOG"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v -e '^\s*$' -e 'UserWarning' -e 'warnings.warn' | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "   ($((SECONDS - start)) s, exit $rc)" | tee -a "$LOG"
  [[ $rc == 0 ]] || status=1
}

{
  echo "gpu_check ($MODE) $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} 2>&1 | tee -a "$LOG"

STEP=(--device "$DEV" --arch "$ARCH" --batch "$BATCH" --frames "$FRAMES" --steps "$STEPS")
part "1. train step: data path from shards vs in-memory batch (bf16)" \
  "$PY" bench/model_step.py "${STEP[@]}" --precision bf16 --vs memory --data-cpus "$CPUS" \
  --stored-frames "$STORED" --distinct "$DISTINCT"
part "2a. train step: bf16 vs fp32 (train.precision)" \
  "$PY" bench/model_step.py "${STEP[@]}" --precision bf16 --vs fp32
PART_LIMIT=$LIMIT_COMPILE part "2b. train step: compiled vs eager image encoder (train.compile), bf16" \
  "$PY" bench/model_step.py "${STEP[@]}" --precision bf16 --vs eager
part "3. predict end to end vs bare forward" "$PY" bench/predict.py --device "$DEV" "${PRED[@]}"
part "4. preprocess: Ray Data job with more workers" "$PY" bench/preprocess.py "${PREP[@]}"
part "5. CPU data path per core vs pure decode" "$PY" bench/data_path.py "${DATA[@]}"
part "6. serve: 8 concurrent clients vs one, the model replica on the device" "$PY" bench/serve.py "${SERVE[@]}"

echo "== summary ($MODE, ${SECONDS} s in all; full log: $LOG)"
grep -E 'ratio|x the PIL|of its pure decode|augmentation per clip|exit [1-9]' "$LOG"
exit $status
