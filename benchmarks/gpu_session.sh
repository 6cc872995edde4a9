#!/usr/bin/env bash
# The one command of a GPU session (issue 17's measurement and the CUDA checks), run on the
# workplace's device machine from the repo root, after `python benchmarks/device_wheels.py` here:
#
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
#
# Here, on a CPU machine, the same sequence with CPU stand-ins (fake GPU id, tiny study slice,
# the CUDA tests skipping), into a temp folder unless OUT is set:
#
#   bash benchmarks/gpu_session.sh --dry-run
#
# Steps, in priority order, each under its own `timeout` inside GPU_SESSION_BUDGET seconds
# (default 510 of the call's 600); a failed step never stops the next:
#   setup   carried wheels into /tmp/site (PYTHONPATH), machine facts, the device's pip list,
#           device_wheels.py --check (every requirement of Snakemake and lotto met?)
#   tests   the CUDA tests (test_gpu_step, test_tf32, test_data -k cuda), at most 90 s
#   slice   benchmarks/study_slice.py: issue 17's slot-scaling table, all the time that is left
#   extras  only if time is left: stream.py --train (short) and distributed.py --gpu-overhead
# GPU_SESSION_STEPS="slice" (say) runs only those steps, e.g. for a rerun on a warm machine.
# Exit status: 0 when every step that ran exited 0, else 1 (the summary says which).
#
# $OUT receives at most 6 flat files (the device returns 8): session.log (facts, tests, extras,
# the step summary), study_slice.md and .json, study_slice.log, study_slice_errors.txt (the
# failed slices' errors, merged), pip_list.txt (the device's packages, for device_wheels.py).
#
# torch there is 2.11.0 / torchvision 0.26.0 (here 2.14 / 0.29): lotto's CUDA path uses
# torch.cuda.graph / CUDAGraph, torch.autocast(bf16), channels_last, the allow_tf32 flags,
# torch.func (vmap, functional_call, stack_module_state) and torchvision.io.decode_jpeg on cuda,
# all older than 2.11 (checked by grep, see benchmarks/README.md). What could differ there:
# deprecation warnings of the allow_tf32 flags (torch 2.9 added fp32_precision; the flags still
# work), and cuDNN / cuBLAS kernels of another release, so numbers are that release's.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1
budget=${GPU_SESSION_BUDGET:-510}
steps=" ${GPU_SESSION_STEPS:-setup tests slice extras} "
started=$SECONDS
if [ $dry_run = 1 ]; then
  OUT=${OUT:-$(mktemp -d /tmp/gpu_session-XXXXXX)}
  if [ -n "${PYTHON:-}" ]; then py=$PYTHON
  elif [ -x .venv/bin/python ]; then py=.venv/bin/python
  else py=python; fi # the project's venv first on PATH, as set up for development
else
  [ -n "${OUT:-}" ] || { echo "gpu_session: OUT is not set (on a CPU machine: --dry-run)" >&2; exit 2; }
  py=${PYTHON:-python3} # the device's python3 holds torch
fi
mkdir -p "$OUT"
log=$OUT/session.log
export PYTHONUNBUFFERED=1
summary=()
failed=0 # any step's exit status other than 0: the session's is 1

left() { echo $((budget - (SECONDS - started))); }
say() { echo "== $* ($(left) s of ${budget} left)" | tee -a "$log"; }
wanted() { [[ $steps == *" $1 "* ]]; }

# step NAME CAP_SECONDS MIN_SECONDS COMMAND...: COMMAND under `timeout CAP` (cut to what is
# left), its output appended to $step_log (session.log unless set for the call); skipped when
# less than MIN_SECONDS are left.
step() {
  local name=$1 cap=$2 least=$3 rc begin shown
  shift 3
  shown="$*"
  shown=${shown%%$'\n'*} # a `bash -c` body: its first line
  [ ${#shown} -gt 160 ] && shown="${shown:0:150} ..."
  if [ "$(left)" -lt "$least" ]; then
    say "$name: skipped, needs ${least} s"
    summary+=("$name: skipped (${least} s needed)")
    return
  fi
  [ "$cap" -gt "$(left)" ] && cap=$(left)
  say "$name: $shown (at most ${cap} s)"
  begin=$SECONDS
  timeout -k 10 "$cap" "$@" 2>&1 | tee -a "${step_log:-$log}"
  rc=${PIPESTATUS[0]}
  say "$name: exit $rc after $((SECONDS - begin)) s"
  [ "$rc" = 0 ] || failed=1
  summary+=("$name: exit $rc, $((SECONDS - begin)) s$([ "$rc" = 124 ] && echo ', cut by its timeout')")
}

# shellcheck disable=SC2317 # run by `bash -c` (through declare -f), so that `timeout` can cap it
machine_facts() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(getconf _NPROCESSORS_ONLN) CPUs; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv
  else
    echo "no nvidia-smi here"
  fi
  "$py" - <<'EOF'
import sys, torch, torchvision
print(f"Python {sys.version.split()[0]} at {sys.executable}; torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}); torchvision {torchvision.__version__}")
print(f"CUDA available: {torch.cuda.is_available()}"
      + (f"; {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}"
         if torch.cuda.is_available() else ""))
try:
    import pynvml
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    print(f"NVML energy counter: {pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)} mJ")
except Exception as err:  # no driver, no GPU, no package: energy columns stay empty
    print(f"NVML energy counter: unavailable ({type(err).__name__}: {err})")
EOF
  "$py" -m snakemake --version
}

if wanted setup; then
  say "setup: $py, OUT=$OUT$([ $dry_run = 1 ] && echo ', DRY RUN with CPU stand-ins')"
  if [ $dry_run = 1 ]; then
    # the device's install line, checked here for a Python 3.12 target without running anything
    # from it (this machine's Python is another version: its own Snakemake runs the steps)
    step wheels 120 10 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --disable-pip-version-check --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
      --upgrade --target "$(mktemp -d)/site" .whl/*.whl
  else
    step wheels 120 10 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --disable-pip-version-check --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  export py
  step facts 60 5 bash -c "$(declare -f machine_facts); machine_facts"
  "$py" -m pip list --format=freeze --disable-pip-version-check >"$OUT/pip_list.txt" 2>&1
  step wheels-check 30 5 "$py" benchmarks/device_wheels.py --check
else
  [ $dry_run = 1 ] || export PYTHONPATH=/tmp/site:$PWD # a rerun on a warm machine: installed before
fi

if wanted tests; then
  step cuda-tests 90 30 "$py" -m pytest -q -p no:cacheprovider tests/test_gpu_step.py tests/test_tf32.py \
    tests/test_data.py::test_augment_batch_on_cuda_matches_itself_and_keeps_the_device \
    tests/test_data.py::test_load_onto_cuda
fi

if wanted slice; then
  # study_slice stops starting slices at its budget and writes its tables after each slice and
  # on SIGTERM; `timeout` gives it 20 s more, for that, before stopping it.
  slice_budget=$(($(left) - 25))
  if [ $dry_run = 1 ]; then fake=(--quick --fake-gpu); else fake=(); fi
  step_log=$OUT/study_slice.log step study-slice $((slice_budget + 20)) 90 "$py" benchmarks/study_slice.py \
    --out "$OUT" --budget "$slice_budget" "${fake[@]}"
  errors=("$OUT"/*.error.txt)
  if [ -e "${errors[0]}" ]; then
    for file in "${errors[@]}"; do printf '### %s\n%s\n\n' "$(basename "$file")" "$(cat "$file")"; done \
      >"$OUT/study_slice_errors.txt"
    rm -f "${errors[@]}"
  fi
fi

if wanted extras; then
  if [ $dry_run = 1 ]; then
    step stream 120 60 "$py" benchmarks/stream.py --train --device cpu --quick --dir /tmp/lotto-bench-jpegs-dry
  else
    step stream 150 120 "$py" benchmarks/stream.py --train --device cuda --images 1024 --batches 10 --repeats 3
  fi
  step distributed-gpu-overhead 120 90 "$py" benchmarks/distributed.py --gpu-overhead --models resnet20 \
    --launches 1 --repeats 2 --steps 200
fi

{
  echo
  echo "== gpu_session summary ($((SECONDS - started)) s of ${budget}; OUT=$OUT)"
  printf '  %s\n' "${summary[@]}"
  ls -l "$OUT"
  if [ -f "$OUT/study_slice.md" ]; then cat "$OUT/study_slice.md"; fi
} 2>&1 | tee -a "$log"
exit $failed
