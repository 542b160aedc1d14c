"""grpo_swift.torch.grpo_loss (forward + backward through autograd) against TRL's loss maths in torch.

Workload (as bench_loss.py): dapo, beta=0.04 (k3 KL), old and ref log-probs given, float32 (and
bfloat16 inputs for the torch layer), uneven completion lengths; B=64 x T=1024 (throughput) and
B=8 x T=128 (per-call overhead). Every variant does forward + backward into a leaf tensor.
Anchors, measured in the same run (medians of repeats):
  - "torch eager loss maths": TRL 1.16's per-token loss written as the minimal torch expression
    (no metrics) -- the anchor of the goals (>= 8x faster at the large size, lower overhead at
    the small size);
  - "torch.compile loss maths": the same function under torch.compile (inductor, fullgraph);
  - "TRL _compute_loss": trl==1.16.0's own code through the test stub (with its metrics).
The torch layer is measured in eager and inside a torch.compile(fullgraph=True) function.
Also printed: the kernel with and without the gradient (why backward reuses the gradient the
forward computed instead of recomputing it), and the autograd floor: an empty autograd.Function
that only hands a prepared gradient buffer back (the leaf, the node, torch's backward engine and
AccumulateGrad, which any autograd op pays) -- the torch layer's time minus the kernel and this
floor is its own overhead (validation, allocation, metrics).
Ratios > 1 mean grpo_swift is faster.

    python python/benchmarks/bench_torch_loss.py [--quick] [--no-compile] [--threads N]
--threads N sets both grpo_swift's and torch's thread counts (default: grpo_swift's, which torch
then uses too). On a shared, oversubscribed machine --threads 1 gives steadier figures: a
2-thread op waits for a descheduled worker.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

import grpo_swift
from _harness import machine, median_time, quick, table

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

try:
    import torch
except ImportError:  # pragma: no cover
    print("bench_torch_loss: torch is not installed (pip install 'grpo-swift[torch]')")
    raise SystemExit(0)

import grpo_swift.torch as gst  # noqa: E402
from grpo_swift.torch import _loss as tloss  # noqa: E402

OPTS = dict(loss_type="dapo", beta=0.04)


def make(B: int, T: int, seed: int = 0):
    r = np.random.default_rng(seed)
    lp = (-r.uniform(0.05, 3, (B, T))).astype(np.float32)
    old = (lp - r.uniform(-0.3, 0.3, (B, T))).astype(np.float32)
    ref = (lp + r.uniform(-0.5, 0.5, (B, T))).astype(np.float32)
    adv = r.normal(size=B).astype(np.float32)
    mask = np.ones((B, T), dtype=bool)
    for i in range(B):  # uneven lengths, as in real batches
        mask[i, int(T * r.uniform(0.5, 1.0)):] = False
    return tuple(torch.from_numpy(x) for x in (lp, old, ref, adv, mask))


def trl_maths(x, old, ref, adv, maskf, n_items):
    """TRL 1.16 _compute_loss's arithmetic for dapo + k3 KL (token level), without metrics."""
    c1 = torch.exp(x - old)
    c2 = torch.clamp(c1, 1 - 0.2, 1 + 0.2)
    a = adv[:, None]
    per_token = -torch.min(c1 * a, c2 * a)
    kl = torch.exp(ref - x) - (ref - x) - 1
    per_token = per_token + 0.04 * kl
    return (per_token * maskf).sum() / n_items


def ours_step(x, old, ref, adv, mask):
    loss, metrics = gst.grpo_loss(x, adv, mask, old_per_token_logps=old, ref_per_token_logps=ref, **OPTS)
    return loss, metrics["kl"]


def timed_compile(fn, *args) -> float:
    t0 = time.perf_counter()
    out = fn(*args)
    out = out[0] if isinstance(out, tuple) else out
    out.backward()
    return time.perf_counter() - t0


def main() -> None:
    compile_too = "--no-compile" not in sys.argv
    if "--threads" in sys.argv:
        grpo_swift.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]))
    torch.set_num_threads(grpo_swift.get_num_threads())
    print("bench_torch_loss:", machine(), f"torch {torch.__version__} threads={torch.get_num_threads()}")
    try:
        print(f"  load average: {os.getloadavg()[0]:.2f} (shared machine: absolute times vary, ratios are "
              f"measured back to back)")
    except OSError:
        pass
    from _trl_reference import trl_loss

    # --quick checks the harness: the aot_eager backend traces the same graphs without inductor's
    # C++ compile (tens of seconds here).
    backend = "aot_eager" if quick() else "inductor"
    eager_compiled = torch.compile(trl_maths, fullgraph=True, backend=backend)
    ours_compiled = torch.compile(ours_step, fullgraph=True, backend=backend)
    for B, T, repeats, inner in ((64, 1024, 11, 5), (8, 128, 11, 200)):
        if quick():
            inner = max(1, inner // 20)
        lp, old, ref, adv, mask = make(B, T)
        maskf, mask64 = mask.float(), mask.long()
        n_items = float(mask.sum())
        lp16, old16, ref16 = lp.bfloat16(), old.bfloat16(), ref.bfloat16()

        def leaf(t):
            return t.detach().requires_grad_(True)

        def eager():
            x = leaf(lp)
            trl_maths(x, old, ref, adv, maskf, n_items).backward()
            return x.grad

        def compiled_maths():
            x = leaf(lp)
            eager_compiled(x, old, ref, adv, maskf, n_items).backward()
            return x.grad

        def ours(m=mask, x0=lp, o=old, r=ref):
            x = leaf(x0)
            loss, _ = gst.grpo_loss(x, adv, m, old_per_token_logps=o, ref_per_token_logps=r, **OPTS)
            loss.backward()
            return x.grad

        def ours_compiled_step():
            x = leaf(lp)
            loss, _ = ours_compiled(x, old, ref, adv, mask)
            loss.backward()
            return x.grad

        def trl():
            return trl_loss(lp.numpy(), adv.numpy(), mask.numpy(), old_logps=old.numpy(), ref_logps=ref.numpy(),
                            **OPTS)

        # Same numbers first: the comparison is between equal computations.
        g_ours = ours()
        np.testing.assert_allclose(g_ours.numpy(), eager().numpy(), atol=1e-6, rtol=1e-4)
        np.testing.assert_allclose(g_ours.numpy(), trl()[1], atol=1e-6, rtol=1e-4)
        compile_note = ""
        if compile_too:
            t_c1 = timed_compile(lambda: (eager_compiled(leaf(lp), old, ref, adv, maskf, n_items),))
            t_c2 = timed_compile(lambda: ours_compiled(leaf(lp), old, ref, adv, mask))
            np.testing.assert_allclose(compiled_maths().numpy(), g_ours.numpy(), atol=1e-6, rtol=1e-4)
            assert torch.equal(ours_compiled_step(), g_ours)
            compile_note = f"first-call compile: loss maths {t_c1:.1f} s, grpo_swift step {t_c2:.1f} s"

        cfg = grpo_swift.LossConfig(**OPTS)
        ints, floats = tloss._split_config(cfg._native_args)
        grad_buf = torch.empty(B, T)
        mask_u8 = mask.view(torch.uint8).numpy()
        bufs = [t.numpy() for t in (lp, old, ref, adv)]

        def kernel(grad):
            return tloss._call_kernel("bench", bufs[0], bufs[1], bufs[2], None, None, bufs[3], mask_u8, None,
                                      cfg._native_args, grad, None)

        class EmptyFunction(torch.autograd.Function):
            """The cheapest autograd node around a kernel: forward allocates the gradient buffer and
            returns a 0-d loss, backward hands the buffer back (no kernel, no validation, no metrics)."""

            @staticmethod
            def forward(ctx, x):
                ctx.grad = torch.empty(B, T)
                return torch.scalar_tensor(0.0)

            @staticmethod
            def backward(ctx, g):
                grad, ctx.grad = ctx.grad, None
                return grad

        def floor():
            x = leaf(lp)
            EmptyFunction.apply(x).backward()
            return x.grad

        measure = lambda f, k=inner: median_time(f, repeats=repeats, inner=k, warmup=3)  # noqa: E731
        t_eager = measure(eager)
        t_ours = measure(ours)
        rows = [("torch eager loss maths fwd+bwd (anchor)", t_eager, "TRL's arithmetic, no metrics")]
        if compile_too:
            t_comp = measure(compiled_maths)
            rows.append(("torch.compile loss maths fwd+bwd", t_comp, f"{backend}, fullgraph"))
        t_trl = measure(trl, max(1, inner // 5))
        rows += [
            ("TRL _compute_loss fwd+bwd", t_trl, "TRL 1.16's own code, with its metrics"),
            ("grpo_swift.torch.grpo_loss fwd+bwd", t_ours, "bool mask, metrics mapping (lazy views)"),
            ("  ... int64 completion_mask (TRL's)", measure(lambda: ours(mask64)), "mask converted to uint8"),
            ("  ... bfloat16 inputs", measure(lambda: ours(mask, lp16, old16, ref16)), "read as bf16, fp32 maths"),
        ]
        if compile_too:
            t_oc = measure(ours_compiled_step)
            rows.append(("  ... inside torch.compile(fullgraph)", t_oc, "custom op in the graph"))
        t_kg = measure(lambda: kernel(grad_buf.numpy()))
        t_kn = measure(lambda: kernel(None))
        t_floor = measure(floor)
        rows += [("kernel: loss + grad (no torch)", t_kg, "what forward runs"),
                 ("kernel: loss only", t_kn, "a recompute in backward would add this"),
                 ("floor: empty autograd.Function fwd+bwd", t_floor, "leaf + node + backward engine, no kernel")]
        table(f"dapo + k3 KL, fwd+bwd, float32, B={B}, T={T}, {int(n_items)} active tokens", rows,
              "torch eager loss maths fwd+bwd (anchor)")
        goal = 8.0 if B * T >= 65536 else 1.0
        print(f"  grpo_swift.torch vs torch eager:   {t_eager / t_ours:.1f}x faster (goal >= {goal:g}x: "
              f"{'MET' if t_eager / t_ours >= goal else 'NOT MET'})")
        if compile_too:
            print(f"  grpo_swift.torch vs torch.compile: {t_comp / t_ours:.1f}x faster; compiled step "
                  f"{t_comp / t_oc:.1f}x")
            print(f"  {compile_note}")
        print(f"  gradient in forward costs {1e6 * (t_kg - t_kn):.0f} us over loss only; recomputing it in "
              f"backward would cost {1e6 * t_kg:.0f} us")
        print(f"  time split: kernel {1e6 * t_kg:.0f} us + autograd floor {1e6 * t_floor:.0f} us + grpo_swift's own "
              f"overhead {1e6 * (t_ours - t_kg - t_floor):.0f} us; at most {t_eager / (t_kg + t_floor):.1f}x eager with "
              f"no overhead of our own")


if __name__ == "__main__":
    main()
