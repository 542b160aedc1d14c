"""Runs every benchmark (python/benchmarks/bench_*.py) in one go and prints their reports.

    python python/benchmarks/run_all.py [--quick] [--report FILE] [--no-swift] [--no-scaling] [name ...]
Each benchmark prints its own ratio tables against the anchors it measures in the same run.
--quick runs each with tiny sizes and few repeats: it checks the harness, not the speed.
--report FILE writes a markdown report: machine (CPU, cores, load average at the start and
the end -- the machine may be shared, so the load belongs beside the numbers), versions, a
summary of every "goal" line the benchmarks print (MET / NOT MET), and the full output.
Besides the bench_*.py scripts it runs scaling.py (log-prob kernels vs size, with a PNG) and
the Swift-native benchmark (`swift run -c release grpo-bench`, built in .build-bench) and
prints Python-call / Swift-native time ratios, so the Python/C overhead is visible.
--quick skips the Swift-native benchmark (building it takes minutes); --swift forces it.
--readme (with --report, on a complete non-quick run) also rewrites the generated performance
summary between the `<!-- bench:begin -->` / `<!-- bench:end -->` markers of README.md and
docs/guide.md: the machine, versions and load of this run and every goal line, so the tables
users read always come from one real run.
Exit status is non-zero when a benchmark fails.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _opt(argv: list[str], name: str) -> str | None:
    if name in argv:
        i = argv.index(name)
        if i + 1 < len(argv):
            return argv[i + 1]
        raise SystemExit(f"run_all.py: {name} needs a value")
    return None


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"
    except OSError:
        return "unavailable"


def machine_info() -> list[tuple[str, str]]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                    break
    except OSError:
        pass
    return [("CPU", cpu), ("logical CPUs", str(os.cpu_count())), ("memory", mem)]


def versions() -> list[tuple[str, str]]:
    """Versions, read in a child process (so this process never loads OpenBLAS/torch)."""
    code = r"""
import importlib, os
out = []
import importlib.metadata
for mod in ("grpo_swift", "numpy", "torch", "trl", "liger_kernel"):
    try:
        m = importlib.import_module(mod)
        v = getattr(m, "__version__", None)
        if v is None:
            try:
                v = importlib.metadata.version(mod.replace("_", "-"))
            except importlib.metadata.PackageNotFoundError:
                v = "installed (no __version__)"
        out.append((mod, v))
    except Exception as e:
        out.append((mod, f"not importable ({type(e).__name__})"))
try:
    import grpo_swift
    out.append(("grpo_swift threads", str(grpo_swift.get_num_threads())))
    out.append(("OPENBLAS_CORETYPE", os.environ.get("OPENBLAS_CORETYPE", "(unset: OpenBLAS auto-detect)")))
    nat = grpo_swift._native
    for name in ("openblas_config", "blas_config", "build_info"):
        f = getattr(nat, name, None)
        if callable(f):
            out.append((f"_native.{name}()", str(f())))
except Exception as e:
    out.append(("grpo_swift details", f"unavailable ({type(e).__name__}: {e})"))
try:
    import ctypes, ctypes.util
    lib = None
    for cand in ("libopenblas.so.0", ctypes.util.find_library("openblas")):
        if cand:
            try:
                lib = ctypes.CDLL(cand); break
            except OSError:
                pass
    if lib is not None:
        lib.openblas_get_config.restype = ctypes.c_char_p
        lib.openblas_get_corename.restype = ctypes.c_char_p
        out.append(("OpenBLAS config", lib.openblas_get_config().decode()))
        out.append(("OpenBLAS core", lib.openblas_get_corename().decode()))
except Exception as e:
    out.append(("OpenBLAS", f"unavailable ({type(e).__name__})"))
for k, v in out:
    print(f"{k}\t{v}")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE)
    rows = [tuple(line.split("\t", 1)) for line in res.stdout.splitlines() if "\t" in line]
    return rows or [("versions", "unavailable: " + res.stderr[-300:])]


GOAL_RE = re.compile(r"goal", re.IGNORECASE)


def goal_lines(output: str) -> list[tuple[str, str]]:
    """Every printed line mentioning a goal that carries a verdict: (verdict, line)."""
    return [(v, line) for v, line, _ in goal_lines_with_context(output)]


def goal_lines_with_context(output: str) -> list[tuple[str, str, str]]:
    """(verdict, line, context): context = the last unindented line printed before it (the
    benchmark's section title, which names the sizes)."""
    rows = []
    context = ""
    for raw in output.splitlines():
        if raw.strip() and not raw[0].isspace() and "MET" not in raw:
            context = raw.strip()
        if not GOAL_RE.search(raw):
            continue
        line = raw.strip()
        if "NOT MET" in line:
            rows.append(("NOT MET", line, context))
        elif "MET" in line:
            rows.append(("MET", line, context))
    return rows


def run(cmd: list[str], label: str, *, cwd: str, timeout: float | None = None) -> tuple[int, str, float]:
    """Runs cmd, echoing its output live and returning (rc, output, seconds)."""
    print(f"\n{'=' * 100}\n{label}\n{'=' * 100}", flush=True)
    t0 = time.perf_counter()
    chunks: list[str] = []
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        msg = f"could not start {cmd[0]}: {e}\n"
        print(msg, end="")
        return 127, msg, 0.0
    assert proc.stdout is not None
    deadline = None if timeout is None else t0 + timeout
    for line in proc.stdout:
        print(line, end="", flush=True)
        chunks.append(line)
        if deadline is not None and time.perf_counter() > deadline:
            proc.kill()
            chunks.append(f"[killed: over the {timeout:.0f} s budget]\n")
            break
    rc = proc.wait()
    dt = time.perf_counter() - t0
    print(f"[{label}: exit {rc}, {dt:.1f} s]", flush=True)
    return rc, "".join(chunks), dt


SWIFT_LINE = re.compile(r"^SWIFT\s+(\S+)\s+median_s=([0-9.eE+-]+)")
SWIFT_C_LINE = re.compile(r"^SWIFT_C\s+(\S+)\s+median_s=([0-9.eE+-]+)")
PY_LINE = re.compile(r"^PYCALL\s+(\S+)\s+median_s=([0-9.eE+-]+)")


def swift_native(quick: bool) -> tuple[int, str, dict[str, float]]:
    build = ["swift", "build", "-c", "release", "--scratch-path", ".build-bench", "--product", "grpo-bench"]
    rc, out, _ = run(build, "build grpo-bench (swift build -c release --scratch-path .build-bench)", cwd=ROOT)
    if rc != 0:
        return rc, out, {}
    cmd = ["swift", "run", "-c", "release", "--skip-build", "--scratch-path", ".build-bench", "grpo-bench"]
    if quick:
        cmd.append("--quick")
    rc2, out2, _ = run(cmd, "grpo-bench (Swift-native, no Python)", cwd=ROOT)
    times = {}
    for line in out2.splitlines():
        m = SWIFT_LINE.match(line.strip())
        if m:
            times[m.group(1)] = float(m.group(2))
        m = SWIFT_C_LINE.match(line.strip())
        if m:
            times["C:" + m.group(1)] = float(m.group(2))
    return rc2, out + out2, times


def python_calls(quick: bool) -> tuple[int, str, dict[str, float]]:
    cmd = [sys.executable, os.path.join(HERE, "swift_overhead.py"), *(["--quick"] if quick else [])]
    rc, out, _ = run(cmd, "swift_overhead.py (the same kernels called from Python)", cwd=HERE)
    times = {}
    for line in out.splitlines():
        m = PY_LINE.match(line.strip())
        if m:
            times[m.group(1)] = float(m.group(2))
    return rc, out, times


def _fmt_time(t: float) -> str:
    return f"{t * 1e6:.2f}us" if t < 1e-3 else f"{t * 1e3:.3f}ms"


def overhead_table(py: dict[str, float], sw: dict[str, float]) -> str:
    """Python-call / Swift-native ratios. The percall_* rows are the smallest calls: their
    difference (python - swift->C) is the per-call cost of the Python boundary."""
    lines = ["Python call / Swift-native (same kernel, same sizes, same run; > 1 = Python/C overhead).",
             "swift = the public Swift API from a client module; swift->C = the C ABI called from Swift;",
             "boundary = python - swift->C: what a call pays for crossing Python -> C (validation, buffers,",
             "output allocation, GIL release); shown for the percall_* rows (the smallest calls) only: for the",
             "large kernels that difference is below the run-to-run noise of the kernel time itself.",
             f"  {'kernel':<36} {'python':>12} {'swift':>12} {'py/swift':>9} {'swift->C':>12} {'py/(swift->C)':>14}"
             f" {'boundary':>12}"]
    for k in sorted(k for k in py if k in sw or "C:" + k in sw):
        s, c = sw.get(k), sw.get("C:" + k)
        row = f"  {k:<36} {_fmt_time(py[k]):>12}"
        row += f" {_fmt_time(s):>12} {py[k] / s:>8.2f}x" if s else f" {'-':>12} {'-':>9}"
        boundary = _fmt_time(py[k] - c) if c and k.startswith("percall_") else "-"
        row += f" {_fmt_time(c):>12} {py[k] / c:>13.2f}x {boundary:>12}" if c else \
            f" {'-':>12} {'-':>14} {'-':>12}"
        lines.append(row)
    if len(lines) == 6:
        lines.append("  (no kernel measured by both)")
    return "\n".join(lines) + "\n"


REPORT_LINK = "{report_link}"  # replaced per summary file by the report's path relative to it
BEGIN_MARK = "<!-- bench:begin"
END_MARK = "<!-- bench:end -->"
SUMMARY_FILES = ("README.md", os.path.join("docs", "guide.md"))


def summary_markdown(*, started: str, load_start: str, load_end: str, report: str,
                     goals: list[tuple[str, str, str]], extra: str) -> str:
    """The generated performance summary (README.md and docs/guide.md): machine, versions and
    load of the run, every goal line with its verdict, and the per-call Python-boundary rows."""
    info = dict(machine_info())
    ver = dict(versions())
    torch_v = ver.get("torch", "?")
    lines = [
        f"Generated by `make bench` on {started} (`python python/benchmarks/run_all.py --report {report} --readme`;"
        f" full report: [{report}]({REPORT_LINK})). Machine: {info.get('CPU', '?')}, {info.get('logical CPUs', '?')}"
        f" logical CPUs, {info.get('memory', '?')}; load average {load_start.split(' (')[0]} at the start,"
        f" {load_end.split(' (')[0]} at the end (1, 5, 15 min). grpo_swift {ver.get('grpo_swift', '?')} with"
        f" {ver.get('grpo_swift threads', '?')} threads, torch {torch_v}, trl {ver.get('trl', '?')},"
        f" numpy {ver.get('numpy', '?')}, {ver.get('OpenBLAS config', 'OpenBLAS ?').split(' NO_')[0]}"
        f" (core {ver.get('OpenBLAS core', '?')}). Every ratio compares two timings of the same run.",
        "",
        f"{sum(1 for v, _, _ in goals if v == 'MET')} of {len(goals)} goals met in this run.",
        "",
        "| benchmark: workload | result (as printed) | goal |",
        "|---|---|---|",
    ]
    for v, line, ctx in goals:
        lines.append(f"| {ctx.replace('|', '/')} | `{line.replace('|', '/')}` | "
                     f"{'**NOT MET**' if v == 'NOT MET' else 'MET'} |")
    rows = [ln.strip() for ln in extra.splitlines() if ln.strip().startswith("percall_")]
    if rows:
        lines += ["", "Per-call overhead of the Python boundary (smallest calls; `boundary` = Python call minus the "
                  "same call through the C ABI from Swift):", "", "```",
                  "kernel                               python        swift  py/swift     swift->C  py/(swift->C)"
                  "     boundary", *rows, "```"]
    return "\n".join(lines)


def replace_block(text: str, body: str, path: str = "file") -> str:
    """Replaces what stands between the bench markers of `text` with `body` (markers kept)."""
    i = text.find(BEGIN_MARK)
    j = text.find(END_MARK)
    if i < 0 or j < i:
        raise ValueError(f"{path}: no '{BEGIN_MARK} ... -->' / '{END_MARK}' markers to write the summary between")
    head_end = text.index("-->", i) + 3
    return text[:head_end] + "\n" + body.rstrip() + "\n" + text[j:]


def write_summaries(body: str, report: str, root: str = ROOT, files: tuple[str, ...] = SUMMARY_FILES) -> None:
    """Writes `body` into each file's bench block, the report link made relative to that file."""
    for rel in files:
        path = os.path.join(root, rel)
        with open(path) as f:
            text = f.read()
        link = os.path.relpath(os.path.join(root, report), os.path.dirname(path))
        new = replace_block(text, body.replace(REPORT_LINK, link), rel)
        if new != text:
            with open(path, "w") as f:
                f.write(new)
        print(f"performance summary written to {rel}")


def write_report(path: str, *, quick: bool, load_start: str, load_end: str, started: str, wall: float,
                 sections: list[tuple[str, int, str, float]], extra: str,
                 failed: list[str]) -> list[tuple[str, str, str]]:
    goals = [(v, line, f"{label}: {ctx}" if ctx else label)
             for label, _, out, _ in sections for v, line, ctx in goal_lines_with_context(out)]
    md = ["# grpo_swift performance report", "",
          f"Generated by `python python/benchmarks/run_all.py{' --quick' if quick else ''} --report {path}`"
          f" (`make bench`) on {started}, wall time {wall:.0f} s."
          + (" **Quick mode: tiny sizes, the figures check the harness, not the speed.**" if quick else ""),
          "", "Every ratio below is against an anchor measured in the same run on the same machine. "
          "Reproduce with `make bench` (or `python python/benchmarks/run_all.py [--quick] --report FILE`). "
          "Timings are medians of repeated calls (python/benchmarks/_harness.py); peak memory is the largest "
          "RSS increase over the pre-call level, sampled every millisecond (memory freed by a warm-up call and "
          "kept by the allocator is not counted again, so anchors' peaks can be under-estimated).", "",
          "Sections: the goal summary (every line a benchmark prints with a goal and MET / NOT MET), the "
          "Python-call vs Swift-native table (grpo-bench, Benchmarks/GRPOBench/main.swift: the same kernels "
          "at the same sizes without Python), the scaling plot (scaling.py), then every benchmark's full output.",
          "",
          "## Machine", "", "| | |", "|---|---|"]
    for k, v in machine_info():
        md.append(f"| {k} | {v} |")
    md += [f"| load average at start | {load_start} |", f"| load average at end | {load_end} |", "",
           "The machine is shared with other jobs; a load average above the number of CPUs means the "
           "benchmarks competed for cores, which inflates times and makes multi-threaded figures noisy.", "",
           "## Versions", "", "| | |", "|---|---|"]
    for k, v in versions():
        md.append(f"| {k} | {v.replace('|', '/')} |")
    met = sum(1 for v, _, _ in goals if v == "MET")
    md += ["", "## Goals", "", f"{met} of {len(goals)} goal lines MET.", "",
           "| verdict | goal line (as printed) | benchmark: section |", "|---|---|---|"]
    for v, line, ctx in goals:
        md.append(f"| {'**NOT MET**' if v == 'NOT MET' else 'MET'} | `{line.replace('|', '/')}` | "
                  f"{ctx.replace('|', '/')} |")
    if not goals:
        md.append("| - | no goal lines printed | |")
    if failed:
        md += ["", f"**Failed:** {', '.join(failed)}"]
    if extra:
        md += ["", "## Python call vs Swift-native", "", "```", extra.rstrip(), "```"]
    png = os.path.join(os.path.dirname(os.path.abspath(path)), "scaling.png")
    if os.path.exists(png) and any(s[0].startswith("scaling") for s in sections):
        md += ["", "## Scaling", "", "![log-prob kernels vs size](scaling.png)"]
    md += ["", "## Full output", ""]
    for label, rc, out, dt in sections:
        md += [f"### {label} (exit {rc}, {dt:.1f} s)", "", "```", out.rstrip(), "```", ""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"\nreport written to {path} ({met}/{len(goals)} goal lines MET)")
    return goals


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    report = _opt(argv, "--report")
    skip = {a for a in argv if a.startswith("--")}
    names = [a for a in argv if not a.startswith("-") and a != report]
    scripts = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    if names:
        scripts = [s for s in scripts if any(n in os.path.basename(s) for n in names)]
    load_start = load_average()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_all = time.perf_counter()
    print(f"load average at start: {load_start}")
    failed: list[str] = []
    sections: list[tuple[str, int, str, float]] = []
    for script in scripts:
        name = os.path.basename(script)
        rc, out, dt = run([sys.executable, script, *(["--quick"] if quick else [])],
                          f"{name}{' (quick)' if quick else ''}", cwd=HERE)
        sections.append((name, rc, out, dt))
        if rc != 0:
            failed.append(name)
    if "--no-scaling" not in skip and not names:
        png_dir = os.path.dirname(os.path.abspath(report)) if report else HERE
        rc, out, dt = run([sys.executable, os.path.join(HERE, "scaling.py"), *(["--quick"] if quick else []),
                           "--png", os.path.join(png_dir, "scaling.png"), "--budget", "300"], "scaling.py", cwd=HERE)
        sections.append(("scaling.py", rc, out, dt))
        if rc != 0:
            failed.append("scaling.py")
    extra = ""
    if "--no-swift" not in skip and not names and (not quick or "--swift" in skip):
        rc, out, sw = swift_native(quick)
        sections.append(("grpo-bench (Swift-native)", rc, out, 0.0))
        if rc != 0:
            failed.append("grpo-bench")
        rc, out, py = python_calls(quick)
        sections.append(("swift_overhead.py", rc, out, 0.0))
        if rc != 0:
            failed.append("swift_overhead.py")
        extra = overhead_table(py, sw)
        print("\n" + extra)
    elif quick:
        print("\n[--quick: the Swift-native benchmark is skipped (building it takes minutes); --swift runs it]")
    load_end = load_average()
    print(f"load average at end: {load_end}")
    if report:
        goals = write_report(report, quick=quick, load_start=load_start, load_end=load_end, started=started,
                             wall=time.perf_counter() - t_all, sections=sections, extra=extra, failed=failed)
        if "--readme" in skip:
            if quick or names or failed or not extra:
                print("--readme: not written (only a complete, non-quick run with the Swift-native benchmark "
                      "and no failure writes the README/guide summary)")
            else:
                rel = os.path.relpath(os.path.abspath(report), ROOT)
                write_summaries(summary_markdown(started=started, load_start=load_start, load_end=load_end,
                                                 report=rel, goals=goals, extra=extra), rel)
    elif "--readme" in skip:
        print("--readme needs --report FILE")
    if failed:
        print(f"\nFAILED benchmarks: {', '.join(failed)}")
        return 1
    print(f"\nall {len(sections)} benchmarks ran")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
