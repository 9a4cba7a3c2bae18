#!/usr/bin/env bash
# The GPU check, prepared for a session that is lent a GPU machine: one call of the device tool,
#     run(command="bash scripts/gpu_check.sh", timeout_s=540)
# (from the lead's checkout: the tool sends the repository the session started in).
# 1. the machine: nvidia-smi, torch and its CUDA/TF32 settings, package versions (cuda_env.txt);
# 2. CUDA correctness: tests/test_devices.py (every execution path on the GPU in float32 against
#    float64 on the CPU) with the core tests beside it, and every experiment's training and
#    validation steps under torch.cuda.set_sync_debug_mode("error") (tests/test_host_sync.py's
#    CUDA test: no host/device sync in a step), each test named (cuda_tests.txt);
# 3. the speed benchmark on the GPU: plmu bench --device cuda (cuda.json, cuda.png, cuda.txt).
#    cuda.json is rewritten as each benchmark group finishes: if the limit stops the run, the
#    finished groups are there (its "unfinished" lists the rest);
# 4. a short Lightning training run on the GPU in bf16-mixed (Mackey-Glass, generated data):
#    cuda_train.txt and its metrics, cuda_train_metrics.json.
# Each step has its own time limit, so a step that hangs costs only its share of the 530 s
# (GPU_CHECK_BUDGET) that the 540 s call allows: the environment 40 s at most, the tests 115,
# training 70 kept back, and the benchmark what is left (300 s or more). The expected time on
# an H100 is 3 to 4 minutes (estimates in benchmarks/README.md). It uses the machine's own
# python3 (PyTorch with CUDA, lightning, pytest, hypothesis and matplotlib are there; nothing
# is installed) and writes everything into $OUT when set (the device tool's folder: at most 8
# files come back; this writes 7), else into benchmarks/. Copy cuda.json, cuda.png and
# cuda.txt to benchmarks/.
#
# A dry run without a GPU (the same steps on the CPU, small sizes; tests/test_gpu_check.py):
#     GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 OUT=/tmp/check bash scripts/gpu_check.sh
# GPU_CHECK_TESTS replaces the list of test files.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${GPU_CHECK_DEVICE:-cuda}
quick=()
epochs=2
if [ -n "${GPU_CHECK_QUICK:-}" ]; then
    quick=(--quick)
    epochs=1
fi
read -r -a test_files <<<"${GPU_CHECK_TESTS:-tests/test_devices.py tests/test_memory.py \
tests/test_layers.py tests/test_fast_paths.py tests/test_higher_order.py \
tests/test_host_sync.py::test_cuda_training_and_validation_steps_do_not_sync}"
accelerator=gpu
[ "$device" = cpu ] && accelerator=cpu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
budget=${GPU_CHECK_BUDGET:-530}
begin=$SECONDS
step() { echo "[gpu_check $((SECONDS - begin)) s] $*"; }

step "environment -> $out/cuda_env.txt"
{
    date -u
    if command -v nvidia-smi >/dev/null; then timeout -k 2 8 nvidia-smi; fi
    timeout -k 2 18 "$py" - <<'EOF'
import platform

import torch

from plmu import bench

print("python", platform.python_version(), "torch", torch.__version__, "cuda build",
      torch.version.cuda, "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(device), bench.cuda_settings(device))
EOF
    timeout -k 2 8 "$py" -m pip list 2>/dev/null \
        | grep -iE '^(torch|lightning|numpy|scipy|pytest|hypothesis|matplotlib|pyyaml) '
} >"$out/cuda_env.txt" 2>&1
cat "$out/cuda_env.txt"

step "tests -> $out/cuda_tests.txt"
# derandomized: the examples CI draws (make test), so a failure here is the device's, not a new draw
timeout -k 5 110 "$py" -m pytest -v -p no:cacheprovider --hypothesis-profile=derandomized \
    --durations=10 "${test_files[@]}" >"$out/cuda_tests.txt" 2>&1
tests=$?
grep -E "FAILED|ERROR|^=+ .* in [0-9.]+s" "$out/cuda_tests.txt" | tail -n 40
cuda_passed=$(grep -c "cuda.*PASSED" "$out/cuda_tests.txt")
cuda_skipped=$(grep -c "cuda.*SKIPPED" "$out/cuda_tests.txt")
step "tests exit status $tests; CUDA cases: $cuda_passed passed, $cuda_skipped skipped"

step "benchmark -> $out/cuda.json, cuda.png, cuda.txt"
limit=$((budget - (SECONDS - begin) - 70 - 5))
step "benchmark: $limit s at most"
timeout -k 5 "$limit" "$py" -m plmu.bench --device "$device" ${quick[@]+"${quick[@]}"} \
    --json "$out/cuda.json" --plot "$out/cuda.png" 2>&1 | tee "$out/cuda.txt"
bench=${PIPESTATUS[0]}
step "benchmark exit status $bench"

step "training -> $out/cuda_train.txt, cuda_train_metrics.json"
timeout -k 10 60 "$py" -m plmu.cli train mackey-glass --out "$work/train" --set "epochs=$epochs" \
    --set precision=bf16-mixed --accelerator "$accelerator" --devices 1 --no-progress-bar \
    >"$out/cuda_train.txt" 2>&1
train=$?
tail -n 14 "$out/cuda_train.txt"
cp "$work/train/metrics.json" "$out/cuda_train_metrics.json" 2>/dev/null
step "training exit status $train"

echo "tests exit status $tests, bench exit status $bench, train exit status $train"
exit $((tests || bench || train))
