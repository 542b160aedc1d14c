"""verl's own code for parity tests, imported on CPU. No conftest: a test module does

    from _verl import verl_core_algos
    core = verl_core_algos()     # verl.trainer.ppo.core_algos, or the module is skipped with the reason

The tests pin verl 0.9.1 (the semantics the parity tests document). It is installed without its
dependencies (`scripts/setup.sh` reads [tool.grpo_swift] test-no-deps in pyproject.toml): verl
declares ray[default], wandb, vllm-era pins and more, none of which core_algos needs; the few
packages its import chain does need (ray, omegaconf, tensordict, codetiming) are in the `test`
extras. Importing verl costs ~10 s of CPU once per session (it imports ray, transformers and
accelerate). Side effects undone here: verl's `logging.basicConfig` (a root handler), and plugin
entry points are not loaded (VERL_USE_EXTERNAL_PLUGINS=none during the import).
"""
from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
from types import ModuleType

import pytest

VERL_VERSION = "0.9.1"


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    """(verl.trainer.ppo.core_algos, "") or (None, why it is unavailable)."""
    try:
        version = importlib.metadata.version("verl")
    except importlib.metadata.PackageNotFoundError:
        return None, (f"verl is not installed (the tests pin verl=={VERL_VERSION}: `make setup`, or "
                      f"pip install --no-deps verl=={VERL_VERSION} plus the test extras)")
    if version != VERL_VERSION:
        return None, f"verl {version} is installed; these parity tests pin verl=={VERL_VERSION}'s semantics"
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    plugins = os.environ.get("VERL_USE_EXTERNAL_PLUGINS")
    os.environ["VERL_USE_EXTERNAL_PLUGINS"] = "none"
    try:
        import verl.trainer.ppo.core_algos as core
    except Exception as exc:  # a missing light dependency, an incompatible torch/transformers, ...
        return None, f"verl {version} is installed but verl.trainer.ppo.core_algos does not import on CPU: {exc!r}"
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        if plugins is None:
            os.environ.pop("VERL_USE_EXTERNAL_PLUGINS", None)
        else:
            os.environ["VERL_USE_EXTERNAL_PLUGINS"] = plugins
    return core, ""


def verl_core_algos() -> ModuleType:
    """verl.trainer.ppo.core_algos; skips the calling test (or module, at import time) with the
    reason when verl is not importable."""
    core, why = _load()
    if core is None:
        pytest.skip(why, allow_module_level=True)
    return core


def verl_unavailable_reason() -> str:
    """"" when verl is importable, else why not (for skipif markers)."""
    return _load()[1]
