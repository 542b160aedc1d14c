"""Starts a worker script in several processes on localhost the way users do (torchrun,
accelerate launch), bounded in time, and always cleans up.

`launch()` runs the launcher in a new session, watches every descendant it starts (torchrun
puts each worker in a session of its own, so killing the launcher's process group alone would
orphan them), and on success, failure, timeout or an exception in the caller kills every process
group it saw (SIGTERM, then SIGKILL after a grace period) and waits until none is left. The
master port is a free port chosen at run time. Workers also arm a faulthandler watchdog that
exits them on their own should the launcher itself be killed (see `_dist_worker.py`).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(script: str, args: list[str], nproc: int, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "--max_restarts", "0", script, *args]


def accelerate_cmd(script: str, args: list[str], nproc: int, port: int) -> list[str]:
    # --multi_gpu: on a machine without GPUs, `accelerate launch --num_processes N` alone runs its
    # "simple launcher", which starts ONE process; --multi_gpu goes through torch.distributed.run and
    # the processes then pick the gloo backend on CPU (accelerate's MULTI_CPU).
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip",
            "127.0.0.1", "--main_process_port", str(port), script, *args]


class LaunchError(RuntimeError):
    def __init__(self, message: str, result: "LaunchResult") -> None:
        super().__init__(f"{message}\n--- output (last 6000 chars) ---\n{result.output[-6000:]}")
        self.result = result


@dataclass
class LaunchResult:
    returncode: int | None
    output: str
    elapsed: float
    timed_out: bool
    pids: set[int] = field(default_factory=set)  # every process seen (launcher and descendants)


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": "1", "GRPO_SWIFT_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "WANDB_DISABLED": "true", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([HERE, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    })
    env.update(extra)
    return env


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal_all(pids: set[int], sig: int) -> None:
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    mine = os.getpgid(0)
    for g in groups - {mine}:
        try:
            os.killpg(g, sig)
        except ProcessLookupError:
            pass
    for pid in pids:  # processes that share our group (never the case here, but never signal pytest's group)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def cleanup(proc: subprocess.Popen, pids: set[int], grace: float = 5.0) -> None:
    """Kills every process in `pids` (and their process groups): SIGTERM, then SIGKILL; waits."""
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    leftover = {p for p in pids if _alive(p)}
    if leftover:
        _signal_all(leftover, signal.SIGKILL)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)


def launch(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None, log_path: str,
           check: bool = True, grace: float = 5.0) -> LaunchResult:
    """Runs `cmd` in a new session with a hard `timeout` (seconds); returns its output.

    Every descendant is tracked while it runs; all of them are killed when the command ends,
    fails or times out, or when this function is interrupted (SIGTERM, SIGKILL after `grace`
    seconds). Raises LaunchError when `check` and the command failed or timed out."""
    start = time.monotonic()
    pids: set[int] = set()
    timed_out = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or worker_env(),
                                start_new_session=True, cwd=HERE)
        pids.add(proc.pid)
        try:
            root = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    pids.update(c.pid for c in root.children(recursive=True))
                except psutil.NoSuchProcess:
                    pass
                if time.monotonic() - start > timeout:
                    timed_out = True
                    break
                time.sleep(0.1)
        finally:
            cleanup(proc, pids, grace)
    with open(log_path, "rb") as f:
        output = f.read().decode("utf-8", "replace")
    result = LaunchResult(proc.returncode, output, time.monotonic() - start, timed_out, pids)
    if check and timed_out:
        raise LaunchError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}", result)
    if check and proc.returncode != 0:
        raise LaunchError(f"exit status {proc.returncode}: {' '.join(cmd)}", result)
    return result


def leftover(result: LaunchResult) -> set[int]:
    """Processes of a finished launch that are still alive (must be empty)."""
    return {p for p in result.pids if _alive(p)}
