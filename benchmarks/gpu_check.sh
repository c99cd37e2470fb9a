#!/usr/bin/env bash
# Issue 19's checks on a CUDA machine, in stages that each fit a 10-minute slot (docs/performance.md, "GPU kernels").
#
#   bash benchmarks/gpu_check.sh tests     # CUDA tests of the kernels and the fused paths (in-process, no interpreter)
#   bash benchmarks/gpu_check.sh layer     # one LIF layer at T = 4 and 32, fp32 and bf16 input, B = 128 (x sj, x fp32)
#   bash benchmarks/gpu_check.sh kernels   # A2SG / TLSG / CF / DS-ATGO layers: kernels vs the fused torch code
#                                          # (T = 4 and 32; `kernels 4`, `kernels 32` one T each: the unrolled
#                                          # T = 32 backward kernels take minutes to compile on a fresh machine)
#   bash benchmarks/gpu_check.sh methods   # per-method training step, bf16 autocast, eager (+ its launches, bytes)
#   bash benchmarks/gpu_check.sh compiled  # the same with torch.compile (first step timed apart, with its graph breaks)
#   bash benchmarks/gpu_check.sh tuning    # the kernels alone by block size, warps and replay chunk (LIF at T = 4
#                                          # and 32, circulate firing at T = 4: its T = 32 backward compiles slowly)
#
# Results go to benchmarks/results/*_cuda*.json; the tables print as they finish, and the layer and training-step
# benchmarks rewrite their JSON after each table ("complete": false until the end).  On the device tool's machine
# (``$OUT`` set) the stage's JSON files are also copied to $OUT on exit, whether the stage passed or not.
# STAGE_LIMIT=S (seconds) interrupts the stage's commands (SIGINT) once it has run S seconds, so that it ends, and
# copies what it has, before the device command's own time limit kills it.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
STARTED=$(mktemp)
trap '[ -n "${OUT:-}" ] && find benchmarks/results -name "*.json" -newer "$STARTED" -exec cp {} "$OUT"/ \; ; rm -f "$STARTED"' EXIT
BEGAN=$(date +%s)
limited() {
  [ -z "${STAGE_LIMIT:-}" ] && { "$@"; return; }
  local left=$((BEGAN + STAGE_LIMIT - $(date +%s)))
  [ "$left" -gt 0 ] || { echo "STAGE_LIMIT of ${STAGE_LIMIT} s reached: not starting $1 $2" >&2; return 124; }
  timeout --signal=INT --kill-after=20 "$left" "$@"
}
RECIPES="ds_atgo_cifar10 mpd_agl_cifar10 a2sg_cifar100 cf_cifar10"
case "${1:-}" in
  tests)
    # the four files launch about 1650 distinct kernel specialisations (counted in the interpreter, 2026-12-07), each
    # compiled on first launch (0.1-2.4 s on a CPU: benchmarks/results/kernel_resources*.json), so about 10 minutes
    # in one process: with pytest-xdist installed (wheelhouse.sh pytest-xdist execnet) they run in WORKERS processes
    PARALLEL=()
    if python -P -c "import xdist" 2>/dev/null; then PARALLEL=(-n "${WORKERS:-12}"); fi
    limited python -P -m pytest -q -p no:cacheprovider ${PARALLEL[@]+"${PARALLEL[@]}"} tests/test_triton_lif.py \
      tests/test_triton_cf.py tests/test_fused.py tests/test_fused_cf.py ;;
  layer)
    limited python benchmarks/neuron.py --device cuda --batch 128 --steps 4 32 --dtypes fp32 bf16 --repeats 5 \
      --output benchmarks/results/neuron_cuda.json ;;
  kernels)
    STEPS="${2:-4 32}"
    limited python benchmarks/neuron.py --device cuda --batch 128 --steps $STEPS --dtypes fp32 bf16 --repeats 5 \
      --no_spikingjelly --only ours_fused ours_fused_a2sg ours_fused_a2sg_k10 ours_torch_a2sg ours_fused_tlsg \
      ours_torch_tlsg ours_fused_cf ours_torch_cf ours_fused_cf_tlsg ours_torch_cf_tlsg ours_fused_cf_rec \
      ours_torch_cf_rec ours_fused_ds_atgo ours_torch_ds_atgo \
      --output "benchmarks/results/neuron_cuda_kernels_T${STEPS// /_}.json" ;;
  methods)
    limited python benchmarks/train_step.py --device cuda --batch 128 --batches --autocast bf16 --repeats 5 --warmup 2 \
      --recipes $RECIPES --output benchmarks/results/train_step_cuda_methods.json
    limited python benchmarks/step_counts.py --device cuda --width 1 --size 32 --batch 128 --recipes $RECIPES \
      --output benchmarks/results/step_counts_cuda.json ;;
  compiled)
    limited python benchmarks/train_step.py --device cuda --batch 128 --batches --autocast bf16 --repeats 5 --warmup 2 \
      --compile --variants ann_relu --recipes $RECIPES --output benchmarks/results/train_step_cuda_compiled.json ;;
  tuning)
    limited python benchmarks/kernel_tuning.py --device cuda --kernels lif --steps 4 32 \
      --output benchmarks/results/kernel_tuning_cuda_lif.json
    limited python benchmarks/kernel_tuning.py --device cuda --kernels cf --steps 4 \
      --output benchmarks/results/kernel_tuning_cuda_cf.json ;;
  *)
    echo "usage: bash benchmarks/gpu_check.sh tests|layer|kernels|methods|compiled|tuning" >&2; exit 2 ;;
esac
