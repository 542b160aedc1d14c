"""verl's own loss functions (verl/trainer/ppo/core_algos.py), without importing verl.

`import verl` pulls in ray (verl/__init__.py -> protocol.py) and verl.trainer.ppo.core_algos
imports verl.workers.config -> verl.utils.profiler -> verl.single_controller -> ray: on a CPU
test machine that is hundreds of MB of dependencies for four pure-torch functions. So the
`verl` wheel is installed with --no-deps (scripts/setup.sh, pyproject's
[tool.grpo_swift] test-no-deps) and the definitions of the functions below are taken from the
installed source files by their syntax tree and executed unchanged with torch: verl's code, not
a transcription. Decorators (the policy-loss registry) are dropped; the names the functions use
at definition or run time are provided (verl_F.masked_sum / masked_mean come from verl's
torch_functional.py the same way; AlgoConfig / ActorConfig are only used in annotations and an
isinstance check).

`load()` returns None when verl is not installed (the tests then skip and say why).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import types
from typing import Any, Callable, Optional

import torch

CORE_FUNCTIONS = ("kl_penalty", "kl_penalty_forward", "compute_policy_loss_vanilla", "compute_policy_loss_geo_mean",
                  "agg_loss")
TORCH_FUNCTIONAL = ("masked_sum", "masked_mean")


def _functions(path: str, names: tuple[str, ...], namespace: dict) -> dict[str, Callable]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            node.decorator_list = []
            module = ast.Module(body=[node], type_ignores=[])
            exec(compile(module, path, "exec"), namespace)  # noqa: S102 - verl's own source, unchanged
            found[node.name] = namespace[node.name]
    missing = set(names) - set(found)
    if missing:
        raise RuntimeError(f"verl source {path} lacks {sorted(missing)}: the installed verl changed")
    return found


class _Annotation:
    """Stands for verl's AlgoConfig / ActorConfig (annotations and an isinstance check only)."""


class ActorConfig:
    """The fields of verl's ActorConfig that compute_policy_loss_vanilla / _geo_mean read."""

    def __init__(self, clip_ratio: float, clip_ratio_low: float | None = None, clip_ratio_high: float | None = None,
                 clip_ratio_c: float = 3.0):
        self.clip_ratio = clip_ratio
        self.clip_ratio_low = clip_ratio_low
        self.clip_ratio_high = clip_ratio_high
        self.clip_ratio_c = clip_ratio_c
        self.global_batch_info: dict = {}

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def load() -> types.SimpleNamespace | None:
    spec = importlib.util.find_spec("verl")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    verl_f = types.SimpleNamespace(**_functions(os.path.join(root, "utils", "torch_functional.py"),
                                                TORCH_FUNCTIONAL, {"torch": torch}))
    ns: dict = {"torch": torch, "Optional": Optional, "Any": Any, "verl_F": verl_f,
                "AlgoConfig": _Annotation, "ActorConfig": _Annotation}
    fns = _functions(os.path.join(root, "trainer", "ppo", "core_algos.py"), CORE_FUNCTIONS, ns)
    with open(os.path.join(root, "version", "version"), encoding="utf-8") as f:
        version = f.read().strip()
    return types.SimpleNamespace(version=version, ActorConfig=ActorConfig, masked_mean=verl_f.masked_mean, **fns)
