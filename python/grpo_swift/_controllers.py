"""Coefficient controllers: scalar state updated once per optimizer step (pure Python).

AdaptiveKLController   the KL coefficient of Ziegler et al. 2019 ("Fine-Tuning Language Models
                       from Human Preferences", section 2.2) as in verl's AdaptiveKLController:
                       e = clip(KL / target - 1, -0.2, 0.2), beta <- beta (1 + e n_steps / horizon).
AdaptiveEntropyController
                       the entropy-bonus coefficient of TRL 1.16's GRPOTrainer
                       (use_adaptive_entropy, after Skywork-OR1): at every optimizer step the
                       token-weighted mean entropy H of the step's micro-batches is compared
                       with entropy_target; H <= target raises the coefficient by
                       entropy_coef_delta (capped at entropy_coef_max), else lowers it (floored at
                       entropy_coef_min). The coefficient is APPLIED only while the last measured
                       entropy is <= target (before any measurement: not applied).

Both have `state_dict()` / `load_state_dict()` (plain dicts of floats, JSON-serialisable
apart from TRL's own use of inf for "not measured yet").
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from ._validation import integer, real


def _finite(value: Any, cls: str, arg: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    fn = f"{cls}"
    v = real(value, fn, arg)
    if positive and v <= 0:
        raise ValueError(f"{fn}(): argument '{arg}' must be > 0, got {v}")
    if nonnegative and v < 0:
        raise ValueError(f"{fn}(): argument '{arg}' must be >= 0, got {v}")
    return v


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019; verl's AdaptiveKLController).

    Args:
        init_kl_coef: initial beta (>= 0).
        target_kl: the KL the controller steers towards (> 0).
        horizon: steps over which a 20% proportional error changes beta by 20% (> 0).

    `update(current_kl, n_steps)` multiplies beta by 1 + clip(current_kl/target - 1, ±0.2) *
    n_steps / horizon and returns the new beta. n_steps must be < 5 * horizon so the
    multiplier stays positive (verl does not check; a negative beta would be meaningless).
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: float) -> None:
        cls = "AdaptiveKLController"
        self.value = _finite(init_kl_coef, cls, "init_kl_coef", nonnegative=True)
        self.target = _finite(target_kl, cls, "target_kl", positive=True)
        self.horizon = _finite(horizon, cls, "horizon", positive=True)

    def update(self, current_kl: float, n_steps: int = 1) -> float:
        fn = "AdaptiveKLController.update"
        kl = real(current_kl, fn, "current_kl")
        n = integer(n_steps, fn, "n_steps", minimum=0)
        if n >= 5 * self.horizon:
            raise ValueError(f"{fn}(): argument 'n_steps' must be < 5 * horizon ({5 * self.horizon}) so the "
                             f"multiplier stays positive, got {n}")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cls = "AdaptiveKLController.load_state_dict"
        if not isinstance(state, dict):
            raise TypeError(f"{cls}(): argument 'state' must be a dict, got {type(state).__name__}")
        missing = {"value", "target", "horizon"} - set(state)
        if missing:
            raise ValueError(f"{cls}(): argument 'state' lacks {sorted(missing)}")
        value = _finite(state["value"], cls, "state['value']", nonnegative=True)
        target = _finite(state["target"], cls, "state['target']", positive=True)
        horizon = _finite(state["horizon"], cls, "state['horizon']", positive=True)
        self.value, self.target, self.horizon = value, target, horizon

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value!r}, target={self.target!r}, horizon={self.horizon!r})"


class AdaptiveEntropyController:
    """Adaptive entropy-bonus coefficient with TRL 1.16 GRPOTrainer semantics.

    Args mirror GRPOConfig: entropy_coef (initial coefficient), entropy_target (nats),
    entropy_coef_min, entropy_coef_max, entropy_coef_delta.

    Use per optimizer step:
        coef = ctrl.applied_coef              # multiply the mean-entropy bonus by this
        ctrl.observe(entropy_sum, num_tokens)  # once per micro-batch (token sums)
        ctrl.step()                            # at the optimizer-step boundary
    or `ctrl.update(mean_entropy)` when the step's mean entropy is already known.
    """

    def __init__(self, entropy_coef: float = 0.0, *, entropy_target: float = 0.2,
                 entropy_coef_min: float = 0.0, entropy_coef_max: float = 1.0,
                 entropy_coef_delta: float = 0.005) -> None:
        cls = "AdaptiveEntropyController"
        self.entropy_coef = _finite(entropy_coef, cls, "entropy_coef")
        self.entropy_target = _finite(entropy_target, cls, "entropy_target")
        self.entropy_coef_min = _finite(entropy_coef_min, cls, "entropy_coef_min")
        self.entropy_coef_max = _finite(entropy_coef_max, cls, "entropy_coef_max")
        self.entropy_coef_delta = _finite(entropy_coef_delta, cls, "entropy_coef_delta", nonnegative=True)
        if self.entropy_coef_min > self.entropy_coef_max:
            raise ValueError(f"{cls}(): entropy_coef_min ({self.entropy_coef_min}) must be <= entropy_coef_max "
                             f"({self.entropy_coef_max})")
        self.last_entropy = math.inf  # TRL's _last_world_entropy: no bonus before a measurement
        self._window_sum = 0.0
        self._window_tokens = 0.0
        self._window_batches = 0

    @property
    def applied_coef(self) -> float:
        """The coefficient to apply to this step's entropy bonus (0 while entropy > target)."""
        return self.entropy_coef if self.last_entropy <= self.entropy_target else 0.0

    def observe(self, entropy_sum: float, num_tokens: float) -> None:
        """Adds one micro-batch: the sum of its per-token entropies over `num_tokens` tokens."""
        fn = "AdaptiveEntropyController.observe"
        s = real(entropy_sum, fn, "entropy_sum")
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, numbers.Real):
            raise TypeError(f"{fn}(): argument 'num_tokens' must be a number, got {type(num_tokens).__name__}")
        k = real(num_tokens, fn, "num_tokens", minimum=0.0)
        self._window_sum += s
        self._window_tokens += k
        self._window_batches += 1

    def step(self) -> float:
        """Optimizer-step boundary: updates the coefficient from the window's mean entropy
        sum / max(tokens, 1), resets the window, returns the new coefficient."""
        if self._window_batches == 0:
            raise ValueError("AdaptiveEntropyController.step(): no entropy observed since the last step "
                             "(call observe() for each micro-batch first)")
        entropy = self._window_sum / max(self._window_tokens, 1.0)
        if entropy <= self.entropy_target:
            self.entropy_coef = min(self.entropy_coef + self.entropy_coef_delta, self.entropy_coef_max)
        else:
            self.entropy_coef = max(self.entropy_coef - self.entropy_coef_delta, self.entropy_coef_min)
        self.last_entropy = entropy
        self._window_sum = 0.0
        self._window_tokens = 0.0
        self._window_batches = 0
        return self.entropy_coef

    def update(self, entropy: float) -> float:
        """One optimizer step whose mean per-token entropy is `entropy`."""
        e = real(entropy, "AdaptiveEntropyController.update", "entropy")
        self._window_sum, self._window_tokens, self._window_batches = e, 1.0, 1
        return self.step()

    _KEYS = ("entropy_coef", "last_world_entropy", "entropy_target", "entropy_coef_min", "entropy_coef_max",
             "entropy_coef_delta", "window_entropy_sum", "window_tokens", "window_batches")

    def state_dict(self) -> dict[str, float]:
        """Full state. Its first two keys are those of TRL's entropy_ctrl_state.json."""
        return {"entropy_coef": self.entropy_coef, "last_world_entropy": self.last_entropy,
                "entropy_target": self.entropy_target, "entropy_coef_min": self.entropy_coef_min,
                "entropy_coef_max": self.entropy_coef_max, "entropy_coef_delta": self.entropy_coef_delta,
                "window_entropy_sum": self._window_sum, "window_tokens": self._window_tokens,
                "window_batches": float(self._window_batches)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state_dict(); a TRL entropy_ctrl_state.json dict (entropy_coef and
        last_world_entropy only) is accepted too and keeps this controller's hyper-parameters."""
        fn = "AdaptiveEntropyController.load_state_dict"
        if not isinstance(state, dict):
            raise TypeError(f"{fn}(): argument 'state' must be a dict, got {type(state).__name__}")
        missing = {"entropy_coef", "last_world_entropy"} - set(state)
        if missing:
            raise ValueError(f"{fn}(): argument 'state' lacks {sorted(missing)}")
        unknown = set(state) - set(self._KEYS)
        if unknown:
            raise ValueError(f"{fn}(): argument 'state' has unknown keys {sorted(unknown)}")
        new = self.state_dict()
        for key in self._KEYS:
            if key in state:
                new[key] = real(state[key], fn, f"state[{key!r}]", finite=key != "last_world_entropy")
        if math.isnan(new["last_world_entropy"]):
            raise ValueError(f"{fn}(): state['last_world_entropy'] must not be NaN")
        if (new["entropy_coef_min"] > new["entropy_coef_max"] or new["entropy_coef_delta"] < 0
                or new["window_tokens"] < 0 or new["window_batches"] < 0
                or new["window_batches"] != int(new["window_batches"])):
            raise ValueError(f"{fn}(): inconsistent bounds in 'state' (min {new['entropy_coef_min']}, "
                             f"max {new['entropy_coef_max']}, delta {new['entropy_coef_delta']})")
        self.entropy_coef = new["entropy_coef"]
        self.last_entropy = new["last_world_entropy"]
        self.entropy_target = new["entropy_target"]
        self.entropy_coef_min = new["entropy_coef_min"]
        self.entropy_coef_max = new["entropy_coef_max"]
        self.entropy_coef_delta = new["entropy_coef_delta"]
        self._window_sum = new["window_entropy_sum"]
        self._window_tokens = new["window_tokens"]
        self._window_batches = int(new["window_batches"])

    def __repr__(self) -> str:
        return (f"AdaptiveEntropyController(entropy_coef={self.entropy_coef!r}, "
                f"last_entropy={self.last_entropy!r}, entropy_target={self.entropy_target!r})")
