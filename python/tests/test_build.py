"""The installed package: self-contained native libraries, ABI agreement, thread settings."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import grpo_swift
from grpo_swift import _native

PKG_DIR = os.path.dirname(grpo_swift.__file__)


def _native_libraries():
    libs = [os.path.join(PKG_DIR, f) for f in os.listdir(PKG_DIR) if f.endswith(".so")]
    assert any(os.path.basename(p).startswith("libgrpo_swift") for p in libs), libs
    assert any(os.path.basename(p).startswith("_native") for p in libs), libs
    return libs


def _needed(path: str) -> list[str]:
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout
    return [line.split("[", 1)[1].split("]", 1)[0] for line in out.splitlines() if "(NEEDED)" in line]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not available")
def test_shipped_libraries_need_no_swift_runtime():
    for lib in _native_libraries():
        needed = _needed(lib)
        assert needed, f"readelf found no NEEDED entries in {lib}"
        swift = [n for n in needed if "swift" in n.lower() and n != "libgrpo_swift.so"]
        assert not swift, f"{os.path.basename(lib)} depends on the Swift runtime: {swift}"
        assert not any("dispatch" in n.lower() or "Foundation" in n for n in needed), needed


def test_import_works_without_swift_toolchain_on_path(tmp_path):
    # A clean process whose PATH and LD_LIBRARY_PATH cannot reach /opt/swift.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = ("import grpo_swift, numpy as np;"
            "r = grpo_swift.group_advantages(np.array([1., 2., 3., 4.]), 2);"
            "print(r.advantages.tolist())")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True,
                         capture_output=True, text=True)
    assert out.stdout.strip().startswith("[")
    # ldd resolves every dependency of the Swift library without the toolchain.
    if shutil.which("ldd"):
        lib = os.path.join(PKG_DIR, "libgrpo_swift.so")
        ldd = subprocess.run(["ldd", lib], env=env, check=True, capture_output=True, text=True).stdout
        assert "not found" not in ldd, ldd
        assert "/opt/swift" not in ldd and "libswift" not in ldd, ldd


def test_abi_version_matches_header():
    assert _native.abi_version() == _native.ABI_VERSION == 1


def test_num_threads_roundtrip():
    before = grpo_swift.get_num_threads()
    try:
        grpo_swift.set_num_threads(3)
        assert grpo_swift.get_num_threads() == 3
    finally:
        grpo_swift.set_num_threads(before)
    with pytest.raises(ValueError, match="set_num_threads"):
        grpo_swift.set_num_threads(0)
    with pytest.raises(TypeError, match="set_num_threads"):
        grpo_swift.set_num_threads(2.0)


def test_env_variable_sets_thread_count(tmp_path):
    env = dict(os.environ, GRPO_SWIFT_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", "import grpo_swift; print(grpo_swift.get_num_threads())"],
                         env=env, cwd=tmp_path, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "3"


def test_import_without_torch_or_trl(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; sys.modules['trl'] = None;"
            "import grpo_swift; print(grpo_swift.__version__)")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
