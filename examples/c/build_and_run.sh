#!/usr/bin/env bash
# Compiles examples/c/grpo_step.c against the header and the libgrpo_swift.so that
# `make install` / `pip install .` put next to the Python extension, then runs it.
#   examples/c/build_and_run.sh [PYTHON]     (default: .venv/bin/python, else python3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${1:-}
if [ -z "$py" ]; then
    if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
libdir=$("$py" -c 'import os, grpo_swift; print(os.path.dirname(grpo_swift.__file__))')
[ -f "$libdir/libgrpo_swift.so" ] || { echo "no libgrpo_swift.so in $libdir: run make install" >&2; exit 1; }
out=${GRPO_EXAMPLE_BUILD_DIR:-$(mktemp -d)}
mkdir -p "$out"
${CC:-cc} -std=c11 -O2 -Wall -Wextra -Werror -I "$root/CBridge/include" "$here/grpo_step.c" \
    -L "$libdir" -l:libgrpo_swift.so -Wl,-rpath,"$libdir" -lm -o "$out/grpo_step"
"$out/grpo_step"
