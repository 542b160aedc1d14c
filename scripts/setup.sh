#!/usr/bin/env bash
# One-time (idempotent) set-up: Debian packages, the Swift toolchain check, a virtual
# environment with the Python dependencies (runtime + test extras of pyproject.toml).
# Quick when everything is already there. Usage: scripts/setup.sh [VENV_DIR] [PYTHON]
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${2:-python3}

die() { echo "setup: error: $*" >&2; exit 1; }

# 1. Debian packages: OpenBLAS (cblas.h + libopenblas) and the Python headers.
missing=()
for pkg in libopenblas-dev python3-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
        die "missing Debian packages ${missing[*]}; install them as root: apt-get install ${missing[*]}"
    fi
    $SUDO apt-get update -q >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

# 2. The Swift toolchain (SwiftPM builds the core).
command -v swift >/dev/null || die "the Swift toolchain (swift 6.2 or newer) is not on PATH; install it from swift.org"

# 3. The virtual environment and the Python dependencies, reinstalled only when
#    pyproject.toml changes.
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV" || die "could not create a virtual environment with $PYTHON -m venv"
fi
stamp="$VENV/.grpo_swift-deps"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing Python dependencies into $VENV (torch is large: a few minutes the first time)"
    "$VENV/bin/python" -m pip install -q --upgrade pip "setuptools>=77" wheel || die "pip could not upgrade itself"
    deps=$("$VENV/bin/python" - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
PY
)
    mapfile -t reqs <<<"$deps"
    "$VENV/bin/python" -m pip install -q "${reqs[@]}" || die "pip install of ${reqs[*]} failed"
    nodeps=$("$VENV/bin/python" - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f).get("tool", {}).get("grpo-swift", {}).get("no-deps-test", [])))
PY
)
    if [ -n "$nodeps" ]; then
        mapfile -t reqs <<<"$nodeps"
        "$VENV/bin/python" -m pip install -q --no-deps "${reqs[@]}" || die "pip install --no-deps of ${reqs[*]} failed"
    fi
    echo "$want" >"$stamp"
fi
