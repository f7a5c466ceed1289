"""KMM speed, peak memory and accuracy: exact QP vs the tiled APG solver (tladapt.weighting).

For ``n_s = n_t = n`` 2-D points (source ``N(0, I)``, target ``N(0.5, 0.7^2 I)``, one
shared median-heuristic ``sigma`` per size) it times :func:`tladapt.weighting.kmm_weights`

* ``qp``: PIQP's dense interior point on the dense float64 kernel (sizes <= ``--qp-max``);
* ``apg``: the tiled accelerated projected gradient, default memory budget (512 MiB of
  float32 kernel tiles: all of ``K``'s upper triangle up to n ~ 11,000);
* ``apg-stream``: the same with ``memory_budget = --low-budget`` MiB (default 8: room
  for the two 1024x1024 working tiles only, so *every* kernel tile is recomputed at
  every product -- memory independent of ``n``, time dominated by ``exp``);
* ``apg@fw``: APG stopped at the accuracy the Frank-Wolfe reference reached;
* ``fw-ref``: a skada-style dense Frank-Wolfe (our NumPy re-implementation: dense
  float64 ``K``, exact line search, the vertex oracle of the constraint set, 1000
  iterations as in skada's KMM example) -- *not* skada itself, which is not installed;

each in a fresh subprocess. Peak memory is the growth of the process's peak resident
set during the call (Linux ``/proc/self/clear_refs`` + ``VmHWM``: covers NumPy, torch
and PIQP allocations alike; ``tracemalloc`` sees only NumPy) or, with ``--device
cuda``, ``torch.cuda.max_memory_allocated``. Accuracy is the gap in squared MMD,
``MMD^2(beta) - MMD^2(beta_QP) = 2 (f(beta) - f(beta_QP)) / n^2`` (exact, float64, for
``n <= --qp-max``), and the solver's certified bound (Frank-Wolfe duality gap).

Usage::

    python benchmarks/kmm_speed.py                       # cpu, 500 2000 10000
    python benchmarks/kmm_speed.py --device cuda
    python benchmarks/kmm_speed.py --threads 1 --write   # also append to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEADING = "## KMM (tladapt.weighting)"

LEGEND = """2-D points, source N(0, I), target N(0.5, 0.7² I), n_s = n_t, one median-heuristic
sigma per size, B = 1000, eps = (sqrt(n)-1)/sqrt(n); each run in a fresh process.
`qp`: exact QP (PIQP dense interior point, float64). `apg`: `kmm_weights(method="apg")`,
default tol 1e-5 (certified MMD² gap) and 512 MiB budget (float32 upper-triangular
kernel tiles cached). `apg-stream`: same, 8 MiB budget, no tile cached (every kernel
value recomputed at every product). `fw-ref`: our NumPy re-implementation of a
skada-style dense Frank-Wolfe (dense float64 K, exact line search, 1000 iterations;
not skada itself). `apg@fw`: APG with tol set to the MMD² gap that `fw-ref` reached
(equal accuracy, certified). MMD² gap vs QP = 2 (f(beta) - f(beta_QP)) / n² computed
exactly in float64; certified = the solver's Frank-Wolfe duality bound at its
solution. Peak memory = growth of the peak resident set during the call (VmHWM;
includes PIQP's and torch's allocations). Reference given to us, not measured here:
skada's Frank-Wolfe KMM took 0.81 s for 2000 2-D points on this kind of machine."""


def make_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) * 0.7 + 0.5


# --------------------------------------------------------------------------- child process


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def fw_reference(xs, xt, sigma, B, eps, iters):
    """Dense Frank-Wolfe on the KMM QP (float64 NumPy), exact line search, ``iters`` steps."""
    n_s, n_t = len(xs), len(xt)
    d2 = ((xs[:, None, :] - xs[None, :, :]) ** 2).sum(-1)
    K = np.exp(-d2 / (2 * sigma**2))
    del d2
    kappa = n_s / n_t * np.exp(-((xs[:, None, :] - xt[None, :, :]) ** 2).sum(-1) / (2 * sigma**2)).sum(1)
    lower, upper = max(0.0, n_s * (1 - eps)), n_s * (1 + eps)
    x = np.clip(np.ones(n_s), 0, B)
    Kx = K @ x
    ar = np.arange(n_s)
    for _ in range(iters):
        g = Kx - kappa
        order = np.argsort(g)
        cap = (g < 0).sum() * B
        mass = upper if cap >= upper else (cap if cap >= lower else lower)
        s = np.zeros(n_s)
        s[order] = np.clip(mass - B * ar, 0, B)
        d = s - x
        Kd = K @ d
        dKd = d @ Kd
        gap = -(g @ d)
        if gap <= 0:
            break
        step = min(1.0, gap / dKd) if dKd > 0 else 1.0
        x += step * d
        Kx += step * Kd
    return x


def child(spec: dict) -> dict:
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from tladapt.weighting import kmm_weights

    xs, xt = make_data(spec["n"], spec["seed"])
    device = spec["device"]
    cuda = device.startswith("cuda")
    kw = dict(sigma=spec["sigma"], B=spec["B"], return_info=True)
    # warm-up on a tiny problem (imports, PIQP load, allocator), not timed
    kmm_weights(xs[:50], xt[:50], method=spec["method"] if spec["method"] in ("qp", "apg") else "apg",
                sigma=spec["sigma"], device=device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    ok = _reset_peak()
    rss0 = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    info = None
    if spec["method"] == "fw-ref":
        eps = (math.sqrt(spec["n"]) - 1) / math.sqrt(spec["n"])
        w = fw_reference(xs, xt, spec["sigma"], spec["B"], eps, spec["fw_iters"])
    else:
        method = "apg" if spec["method"].startswith("apg") else "qp"
        extra = {}
        if spec.get("budget"):
            extra["memory_budget"] = spec["budget"]
        if spec.get("tol"):
            extra["tol"] = spec["tol"]
        w, info = kmm_weights(xs, xt, method=method, device=device, **kw, **extra)
        if cuda:
            torch.cuda.synchronize()
        w = w.double().cpu().numpy()
    elapsed = time.perf_counter() - t0
    peak = (_rss_kib("VmHWM") - rss0) * 1024 if ok else None
    out = dict(spec, time=elapsed, peak_rss=peak)
    if cuda:
        out["peak_cuda"] = torch.cuda.max_memory_allocated() - base_cuda
    if info is not None:
        out.update(certified=info.gap, iterations=info.iterations, objective=info.objective,
                   cached_bytes=info.cached_bytes, kernel_evaluations=info.kernel_evaluations)
    np.save(spec["weights_path"], w)
    return out


# --------------------------------------------------------------------------- parent


def run_child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f"timeout after {timeout:.0f} s")
    if p.returncode != 0:
        return dict(spec, error=p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def objective(xs, xt, sigma, w):
    """Exact float64 KMM objective f(w) = 1/2 w'Kw - kappa'w (dense, n <= a few thousand)."""
    n_s, n_t = len(xs), len(xt)
    K = np.exp(-((xs[:, None, :] - xs[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))
    kappa = n_s / n_t * np.exp(-((xs[:, None, :] - xt[None, :, :]) ** 2).sum(-1) / (2 * sigma**2)).sum(1)
    return 0.5 * w @ K @ w - kappa @ w


def fmt_bytes(b):
    if b is None:
        return "n/a"
    return f"{b / 2**20:.1f} MiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="torch device for the APG solver (the QP is CPU-only)")
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 10000])
    p.add_argument("--threads", type=int, default=0, help="torch threads in each run (0: torch's default)")
    p.add_argument("--qp-max", type=int, default=2000, help="largest n for the QP and the FW reference")
    p.add_argument("--fw-iters", type=int, default=1000)
    p.add_argument("--low-budget", type=float, default=8.0, help="memory_budget (MiB) of the apg-stream run")
    p.add_argument("--B", type=float, default=1000.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per run")
    p.add_argument("--write", action="store_true", help=f"append/replace '{HEADING}' in benchmarks/RESULTS.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    import torch

    from tladapt.weighting import median_sigma

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="kmm_speed_"))
    for n in args.sizes:
        xs, xt = make_data(n, args.seed)
        sigma = median_sigma(xs, xt)
        base = dict(n=n, sigma=sigma, B=args.B, seed=args.seed, device=args.device,
                    threads=args.threads, fw_iters=args.fw_iters)
        plan = []
        if n <= args.qp_max:
            plan += [dict(method="qp", device="cpu"), dict(method="fw-ref", device="cpu")]
        plan += [dict(method="apg"), dict(method="apg-stream", budget=int(args.low_budget * 2**20))]
        results = {}
        for extra in plan:
            spec = dict(base, **extra)
            spec["weights_path"] = str(tmp / f"{n}_{spec['method']}.npy")
            r = run_child(spec, args.timeout)
            results[spec["method"]] = r
            print(json.dumps({k: v for k, v in r.items() if k not in ("weights_path",)}), flush=True)
        if "fw-ref" in results and "error" not in results["fw-ref"] and "error" not in results["qp"]:
            f_qp = objective(xs, xt, sigma, np.load(results["qp"]["weights_path"]))
            f_fw = objective(xs, xt, sigma, np.load(results["fw-ref"]["weights_path"]))
            fw_gap = max(2 * (f_fw - f_qp) / n**2, 1e-12)
            spec = dict(base, method="apg@fw", tol=fw_gap, weights_path=str(tmp / f"{n}_apgfw.npy"))
            r = run_child(spec, args.timeout)
            results["apg@fw"] = r
            print(json.dumps({k: v for k, v in r.items() if k not in ("weights_path",)}), flush=True)
        f_qp = None
        if "qp" in results and "error" not in results["qp"]:
            f_qp = objective(xs, xt, sigma, np.load(results["qp"]["weights_path"]))
        for method, r in results.items():
            if "error" not in r and f_qp is not None:
                r["gap_vs_qp"] = 2 * (objective(xs, xt, sigma, np.load(r["weights_path"])) - f_qp) / n**2
            rows.append(r)

    cpu = platform.processor() or platform.machine()
    header = (
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores ({cpu}), device {args.device}, "
        f"torch threads {args.threads or torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    lines = [
        "| n_s = n_t | solver | time (s) | peak memory | iterations | MMD² gap vs QP | certified MMD² gap | kernel tiles held |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['method']} | {r['error']} | | | | | |")
            continue
        mem = r.get("peak_cuda", r.get("peak_rss"))
        mem_s = fmt_bytes(mem) + (" (cuda)" if "peak_cuda" in r else " (RSS)")
        gq = r.get("gap_vs_qp")
        lines.append(
            f"| {r['n']} | {r['method']} | {r['time']:.3f} | {mem_s} | "
            f"{r.get('iterations') if r['method'].startswith('apg') else (str(r['fw_iters']) if r['method'] == 'fw-ref' else '-')} | "
            f"{'-' if gq is None else f'{gq:.1e}'} | "
            f"{'' if r.get('certified') is None else '%.1e' % r['certified']} | "
            f"{'' if r.get('cached_bytes') is None else fmt_bytes(r['cached_bytes'])} |"
        )
    table = "\n".join(lines)
    print(header)
    print(table)
    if args.write:
        cmd = "python benchmarks/kmm_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
        section = f"{HEADING}\n\n`{cmd.strip()}` -- {header}.\n\n{LEGEND}\n\n{table}\n"
        path = Path(__file__).with_name("RESULTS.md")
        text = path.read_text() if path.exists() else "# Benchmark results\n"
        if HEADING in text:
            start = text.index(HEADING)
            nxt = text.find("\n## ", start + len(HEADING))
            text = text[:start] + section + ("" if nxt < 0 else text[nxt + 1 :])
        else:
            text = text.rstrip("\n") + "\n\n" + section
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
