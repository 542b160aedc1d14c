"""Every ```python block in README.md and docs/*.md runs (no stale snippets).

The blocks of one file run in order in one fresh interpreter (a later block may use names
an earlier one defined), from a temporary directory. Shell blocks naming an example script
must name one that exists.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def python_blocks(path: str) -> list[str]:
    with open(path) as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


def test_docs_have_python_examples():
    names = {os.path.relpath(p, ROOT) for p in DOCS}
    assert {"README.md", "docs/guide.md", "docs/zero_loss.md"} <= names
    assert all(python_blocks(p) for p in DOCS if p.endswith(("guide.md", "zero_loss.md")))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_python_blocks_run(path, tmp_path):
    blocks = python_blocks(path)
    if not blocks:
        pytest.skip("no python blocks")
    src = "\n\n".join(f"# ---- block {i + 1}\n{b}" for i, b in enumerate(blocks))
    script = tmp_path / "doc_blocks.py"
    script.write_text(src)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, f"{os.path.relpath(path, ROOT)}:\n{out.stdout}\n{out.stderr}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_referenced_examples_exist(path):
    with open(path) as f:
        text = f.read()
    for ref in sorted(set(re.findall(r"examples/[\w/]+\.(?:py|sh|c|swift)", text))):
        assert os.path.exists(os.path.join(ROOT, ref)), f"{os.path.relpath(path, ROOT)} names missing {ref}"
