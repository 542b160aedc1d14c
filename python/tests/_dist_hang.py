"""Misbehaving "workers" for the launcher clean-up tests (plain Python, started by torchrun; no
torch import, so they start at once). Not collected by pytest.

    python _dist_hang.py hang OUT_DIR   every rank blocks forever; rank 1 also ignores SIGTERM
    python _dist_hang.py fail OUT_DIR   rank 1 raises; rank 0 blocks forever (as in a collective
                                        waiting for the failed rank)

Each rank writes its pid to OUT_DIR/<mode>-rank<r>.pid first. SIGALRM ends every rank after
GRPO_DIST_WATCHDOG seconds (120) whatever happens to the test that started it.
"""
import os
import signal
import sys
import time

if __name__ == "__main__":
    signal.alarm(int(os.environ.get("GRPO_DIST_WATCHDOG", "120")))  # never outlive a killed test run
    mode, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    with open(os.path.join(out, f"{mode}-rank{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    if mode == "hang" and rank == 1:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
    if mode == "fail" and rank == 1:
        time.sleep(0.5)
        raise RuntimeError("deliberate failure on rank 1")
    while True:
        time.sleep(1)
