"""Build glue: `pip install .` builds the Swift core with SwiftPM, then the CPython extension.

The Swift library is built as ONE shared library with the Swift runtime linked statically
(-static-stdlib), copied next to the extension, and found through rpath $ORIGIN, so the
installed package needs no Swift toolchain at run time.
"""
import glob
import os
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
SCRATCH = os.path.join(ROOT, ".build-python")  # separate from `swift test`'s .build
SWIFT_LIB = "libgrpo_swift.so"
# GRPO_SWIFT_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer build of the Swift
# library and the extension (for `make sanitize`; load with the ASan runtime preloaded).
SANITIZE = os.environ.get("GRPO_SWIFT_SANITIZE") == "1"
if SANITIZE:
    SCRATCH = os.path.join(ROOT, ".build-asan")


def swift_build_cmd(*extra):
    # Swift code supports ASan on Linux (UBSan is C-only: used for the extension below).
    sanitizers = ["--sanitize=address"] if SANITIZE else []
    return ["swift", "build", "-c", "release", "--product", "grpo_swift",
            "--scratch-path", SCRATCH, "-Xswiftc", "-static-stdlib", *sanitizers, *extra]


class SwiftBuildExt(build_ext):
    def run(self):
        if shutil.which("swift") is None:
            raise RuntimeError(
                "grpo_swift needs the Swift toolchain (swift on PATH, 6.2 or newer) to build "
                "from source; see README.md")
        subprocess.run(swift_build_cmd(), cwd=ROOT, check=True)
        bin_path = subprocess.run(swift_build_cmd("--show-bin-path"), cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout.strip()
        lib = os.path.join(bin_path, SWIFT_LIB)
        if not os.path.exists(lib):
            raise RuntimeError(f"swift build did not produce {lib}")
        for ext in self.extensions:
            ext.library_dirs.append(bin_path)
        super().run()
        # Ship the Swift library beside the extension module.
        for ext in self.extensions:
            dest_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
            os.makedirs(dest_dir, exist_ok=True)
            shutil.copy2(lib, os.path.join(dest_dir, SWIFT_LIB))


native = Extension(
    "grpo_swift._native",
    sources=sorted(glob.glob(os.path.join("python", "src", "*.c"))),
    include_dirs=[os.path.join("CBridge", "include"), os.path.join("python", "src")],
    libraries=["grpo_swift"],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers", "-Werror=implicit-function-declaration"],
    extra_link_args=["-Wl,-rpath,$ORIGIN"] + (["-fsanitize=address,undefined", "-shared-libasan"] if SANITIZE else []),
)
if SANITIZE:
    native.extra_compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]

setup(ext_modules=[native], cmdclass={"build_ext": SwiftBuildExt})
