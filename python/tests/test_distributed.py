"""Multi-process training on torch.distributed (gloo, CPU, 2 processes on localhost).

* Gradients (one torchrun launch, _dist_worker.py grads): for every loss type, 3 settings (token
  level with beta; sequence level with the high-entropy mask and the entropy bonus; gradient
  accumulation 2 with steps_per_generation 2), float32 and float64, a 12-row batch in groups of
  4 split 6 / 6 (group 1 spans the two processes) with different completion lengths per process
  (T = 7 and 5) and a fully masked row on each: the gradient each process holds after DDP's
  all-reduce
    - with grpo_swift.distributed.grpo_loss(normalization="global") equals the single-process
      gradient of the same global batch (1e-5 relative in float32, 1e-12 in float64);
    - with normalization="trl" equals the gradient of TRL 1.16's own _compute_loss run in the
      same two processes (its gathers through a real accelerate.Accelerator) under DDP, and the
      reduced metrics equal what TRL logs.
* Trainer (one `accelerate launch --multi_gpu --num_processes 2` launch, _dist_worker.py trainer):
  SwiftGRPOTrainer and stock trl.GRPOTrainer, 3 steps each in 2 processes, same completions, same
  logged metrics and parameters; and a 1-process SwiftGRPOTrainer run with the same global batch
  gives the same losses and parameters (trl_dist_common.py explains the deterministic sampling).
* Launcher hygiene (_dist_launch.py): timeouts, failures and clean-up leave no process behind.

Budget: ~2-3 minutes on a 2-core machine. GRPO_DIST_FULL=1 also runs the trainer under torchrun.
"""
from __future__ import annotations

import math
import os
import re

import pytest

from conftest import has_module

_OK = has_module("trl") and has_module("psutil")
pytestmark = pytest.mark.skipif(not _OK, reason="needs trl (and psutil) installed (pip install .[test])")

if _OK:
    import torch

    import _dist_launch as dl
    import trl_dist_common as tdc
    from _dist_worker import CASES, LOSS_TYPES, runs

GRADS_TIMEOUT = float(os.environ.get("GRPO_DIST_TIMEOUT", "300"))
TRAINER_TIMEOUT = float(os.environ.get("GRPO_DIST_TRAINER_TIMEOUT", "480"))
FULL = os.environ.get("GRPO_DIST_FULL") == "1"


def _run(launcher: str, mode: str, out_dir: str, timeout: float) -> dict[int, dict]:
    script = os.path.join(dl.HERE, "_dist_worker.py")
    cmd = (dl.torchrun_cmd if launcher == "torchrun" else dl.accelerate_cmd)(script, [mode, out_dir], 2,
                                                                              dl.free_port())
    env = dl.worker_env(GRPO_DIST_WATCHDOG=str(int(timeout) + 30))
    result = dl.launch(cmd, timeout=timeout, env=env, log_path=os.path.join(out_dir, f"{mode}.log"))
    assert not dl.leftover(result), f"processes left behind: {dl.leftover(result)}"
    return {r: torch.load(os.path.join(out_dir, f"{mode}-rank{r}.pt"), weights_only=False) for r in (0, 1)}


@pytest.fixture(scope="module")
def grads(tmp_path_factory):
    return _run("torchrun", "grads", str(tmp_path_factory.mktemp("grads")), GRADS_TIMEOUT)


def _rel(a: "torch.Tensor", b: "torch.Tensor") -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def _tol(dtype: str) -> float:
    return 1e-5 if dtype == "torch.float32" else 1e-12


CASE_IDS = [(d, c, t) for d in ("torch.float32", "torch.float64") for c in CASES for t in LOSS_TYPES
            if runs(c, t)] if _OK else []


def test_two_gloo_processes_and_advantages_across_ranks(grads):
    for r in (0, 1):
        assert grads[r]["world"] == 2 and grads[r]["rank"] == r
        adv = grads[r]["advantages"]
        assert adv["rows"] == (6, 6) and adv["offset"] == 6 * r
        # Group 1 (rows 4-7) spans the processes: each process's slice of the gathered computation equals
        # the single-process advantages bit for bit.
        assert torch.equal(adv["local"], adv["expected"])


@pytest.mark.parametrize("key", CASE_IDS, ids=["-".join(k).replace("torch.", "") for k in CASE_IDS])
def test_ddp_gradient_equals_single_process_gradient(grads, key):
    dtype = key[0]
    for r in (0, 1):
        c = grads[r]["cases"][key]
        assert c["single_grad"].abs().max() > 0
        err = _rel(c["ddp_global_grad"], c["single_grad"])
        assert err <= _tol(dtype), (r, key, err)
        # DDP's average: both processes hold the same gradient.
        assert torch.equal(c["ddp_global_grad"], grads[1 - r]["cases"][key]["ddp_global_grad"])
    # The mean of the processes' losses is the single-process loss (per micro-batch).
    a, b = grads[0]["cases"][key], grads[1]["cases"][key]
    for k, single in enumerate(a["single_loss"]):
        mean = (a["ddp_global_loss"][k] + b["ddp_global_loss"][k]) / 2
        assert math.isclose(mean, single, rel_tol=10 * _tol(dtype), abs_tol=10 * _tol(dtype)), (k, mean, single)


@pytest.mark.parametrize("key", CASE_IDS, ids=["-".join(k).replace("torch.", "") for k in CASE_IDS])
def test_trl_normalization_equals_trl_multiprocess(grads, key):
    dtype, case, loss_type = key
    tol = 1e-5 if dtype == "torch.float32" else 1e-10
    for r in (0, 1):
        c = grads[r]["cases"][key]
        err = _rel(c["ddp_trl_grad"], c["trl_ddp_grad"])
        assert err <= (1e-4 if dtype == "torch.float32" else 1e-10), (r, err)
        for ours, theirs, shift in zip(c["ddp_trl_loss"], c["trl_ddp_loss"], c["trl_empty_row_shift"]):
            theirs += shift  # GMPO's empty rows: TRL adds -A_i / (B GA), grpo_swift 0 (see _dist_worker)
            assert math.isclose(ours, theirs, rel_tol=1e-4 if tol > 1e-9 else 1e-10, abs_tol=tol), (ours, theirs)
        if loss_type != "gmpo":
            assert not any(c["trl_empty_row_shift"])
        for ours, theirs in zip(c["ddp_trl_metrics"], c["trl_ddp_metrics"]):
            missing = set(theirs) - set(ours) - {"entropy_coef"}
            assert not missing, f"metrics TRL logs that grpo_swift.distributed does not reduce: {missing}"
            for name, v in theirs.items():
                if name == "entropy_coef":
                    continue
                # TRL sums its float32 metric tensors in float32.
                assert math.isclose(ours[name], v, rel_tol=1e-5, abs_tol=1e-6) or (math.isnan(v) and
                                                                                   math.isnan(ours[name])), \
                    (r, name, ours[name], v)
        # Reduced metrics are identical on both processes.
        assert c["ddp_trl_metrics"] == grads[1 - r]["cases"][key]["ddp_trl_metrics"]
    # Where TRL's normalisers are per process (bnpo, the entropy bonus), its 2-process gradient is NOT the
    # single-process one -- which is why normalization="global" exists; elsewhere it is.
    c = grads[0]["cases"][key]
    local_normaliser = loss_type == "bnpo" or "entropy" in case
    differs = _rel(c["trl_ddp_grad"], c["single_grad"])
    if local_normaliser:
        assert differs > 1e-3, differs
    else:
        assert differs <= _tol(dtype) * 10, differs


def test_input_error_on_one_process_raises_on_both(grads):
    kind1, msg1 = grads[1]["error"]
    kind0, msg0 = grads[0]["error"]
    assert kind1 == "ValueError" and "completion_mask" in msg1
    assert kind0 == "RuntimeError" and "process(es) [1]" in msg0


# ---------------------------------------------------------------------------------------------
# SwiftGRPOTrainer in two processes

TRAINER_LAUNCHERS = ["accelerate"] + (["torchrun"] if FULL else [])
_SKIP_KEYS = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "epoch", "step"}


@pytest.fixture(scope="module", params=TRAINER_LAUNCHERS)
def trainer_runs(request, tmp_path_factory):
    out = _run(request.param, "trainer", str(tmp_path_factory.mktemp(f"trainer-{request.param}")), TRAINER_TIMEOUT)
    return out[0]  # the main process holds the logs


def _close(a: float, b: float, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    return abs(a - b) <= atol + rtol * abs(b)


@pytest.mark.parametrize("case", sorted(tdc.DIST_CASES) if _OK else [])
def test_trainer_two_processes_equal_stock_trl_two_processes(trainer_runs, case):
    stock, swift = trainer_runs[(case, "stock")], trainer_runs[(case, "swift")]
    assert stock["world"] == swift["world"] == 2
    assert swift["calls"]["loss"] > 0 and swift["calls"]["log_probs"] > 0 and swift["calls"]["advantages"] > 0
    assert stock["completions"] and stock["completions"] == swift["completions"]
    assert len(stock["logs"]) == len(swift["logs"]) == tdc.STEPS
    for step, (a, b) in enumerate(zip(stock["logs"], swift["logs"])):
        missing = set(a) - set(b)
        assert not missing, f"metrics stock TRL logs but SwiftGRPOTrainer does not: {missing}"
        assert not {k for k in set(b) - set(a) if not k.startswith("grpo_swift/")}
        for k, v in a.items():
            if k in _SKIP_KEYS or not isinstance(v, float):
                continue
            if math.isnan(v):
                assert math.isnan(b[k]), (step, k)
            else:
                assert _close(b[k], v), (step, k, v, b[k])
    init = tdc.common.make_model(tdc.common.make_tokenizer()).state_dict()
    moved = (stock["params"]["lm_head.weight"] - init["lm_head.weight"]).abs().max().item()
    assert moved > 1e-4, "the parameters did not move"
    for name, p in stock["params"].items():
        diff = (p - swift["params"][name]).abs().max().item()
        assert diff <= 1e-5, (name, diff)


ONE_PROCESS_CASES = sorted(k for k, v in tdc.DIST_CASES.items() if v[2]) if _OK else []


@pytest.mark.parametrize("case", ONE_PROCESS_CASES)
def test_trainer_two_processes_equal_one_process(trainer_runs, case):
    two = trainer_runs[(case, "swift")]
    one = tdc.run_case(case, "swift", processes=1)
    assert one["world"] == 1 and one["calls"]["loss"] > 0
    assert one["completions"] == two["completions"], "the runs sampled different completions"
    assert len(one["logs"]) == len(two["logs"]) == tdc.STEPS
    for step, (a, b) in enumerate(zip(one["logs"], two["logs"])):
        assert _close(b["loss"], a["loss"]), (step, a["loss"], b["loss"])
        assert _close(b["grad_norm"], a["grad_norm"]), (step, a["grad_norm"], b["grad_norm"])
    for name, p in one["params"].items():
        diff = (p - two["params"][name]).abs().max().item()
        assert diff <= 1e-5, (name, diff)


@pytest.mark.skipif(not FULL, reason="set GRPO_DIST_FULL=1 (adds ~30 s): examples/distributed_grpo.py in 2 processes")
def test_distributed_example_learns_in_two_processes(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(dl.HERE)), "examples", "distributed_grpo.py")
    result = dl.launch(dl.torchrun_cmd(script, ["--steps", "40"], 2, dl.free_port()), timeout=TRAINER_TIMEOUT,
                       log_path=str(tmp_path / "example.log"))
    assert not dl.leftover(result)
    m = re.search(r"mean reward: first \d+ steps ([0-9.]+), last \d+ steps ([0-9.]+)", result.output)
    assert m and float(m.group(2)) > float(m.group(1)) + 0.2, result.output[-3000:]
    assert "over 2 process(es)" in result.output


# ---------------------------------------------------------------------------------------------
# Launcher hygiene: bounded in time, nothing left behind


def _hang_cmd(mode: str, out_dir: str) -> list[str]:
    return dl.torchrun_cmd(os.path.join(dl.HERE, "_dist_hang.py"), [mode, out_dir], 2, dl.free_port())


def _worker_pids(out_dir: str, mode: str) -> list[int]:
    pids = []
    for r in (0, 1):
        path = os.path.join(out_dir, f"{mode}-rank{r}.pid")
        assert os.path.exists(path), f"worker {r} never started (machine too slow for the timeout?)"
        with open(path) as f:
            pids.append(int(f.read()))
    return pids


def test_timeout_kills_every_process_even_one_ignoring_sigterm(tmp_path):
    t = float(os.environ.get("GRPO_DIST_HANG_TIMEOUT", "15"))
    with pytest.raises(dl.LaunchError, match="timed out") as info:
        dl.launch(_hang_cmd("hang", str(tmp_path)), timeout=t, log_path=str(tmp_path / "hang.log"), grace=2.0)
    result = info.value.result
    assert result.timed_out and result.elapsed < t + 30
    workers = _worker_pids(str(tmp_path), "hang")
    assert set(workers) <= result.pids, "the launcher did not see the workers (torchrun starts them in new sessions)"
    assert not dl.leftover(result), f"processes left behind: {dl.leftover(result)}"


def test_failing_rank_stops_the_launch_and_leaves_nothing(tmp_path):
    with pytest.raises(dl.LaunchError, match="exit status") as info:
        dl.launch(_hang_cmd("fail", str(tmp_path)), timeout=120, log_path=str(tmp_path / "fail.log"))
    result = info.value.result
    assert "deliberate failure on rank 1" in result.output
    workers = _worker_pids(str(tmp_path), "fail")
    assert set(workers) <= result.pids
    assert not dl.leftover(result), f"processes left behind: {dl.leftover(result)}"


def test_free_port_is_free_and_chosen_at_run_time():
    import socket

    ports = {dl.free_port() for _ in range(3)}
    for p in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", p))
