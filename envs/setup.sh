#!/usr/bin/env bash
# Set up lotto in a project-local virtual environment (.venv), idempotently.
#   bash envs/setup.sh          the package, Snakemake and Debian's Fashion-MNIST
#   bash envs/setup.sh --test   also the test tools (pytest, hypothesis, snakefmt, ruff, chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  else
    echo "lotto setup: please install the Debian packages: ${missing[*]} (needs root)" >&2
  fi
}

apt_install dataset-fashion-mnist
[ $with_tests = 1 ] && apt_install chromium

python=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch and torchvision pinned first: where these releases lie on local disk, pip takes them
# from there instead of downloading a newer CUDA build.
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || "${pip[@]}" torch==2.14.1 torchvision==0.29.1
extras="workflow"
[ $with_tests = 1 ] && extras="workflow,test"
"${pip[@]}" -e ".[${extras}]"
echo "lotto setup: ready (.venv)" >&2
