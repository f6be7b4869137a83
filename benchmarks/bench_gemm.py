"""Benchmark: lowbit's binary GEMM vs torch.matmul fp32 vs the naive XNOR kernel.

Run ``python benchmarks/bench_gemm.py`` (or import it and call ``main()``). Shapes: 4096 x 4096 x 4096
and the MNIST MLP's layers (784 -> 4096 -> 4096 -> 10) at batch 256 and batch 1. For each, side by side
in one run, the median of repeats on the same threads (2 unless ``--threads``), the contenders run
round-robin (each warmed up right before it is timed) so that load from other processes affects
them alike:

* ours, GEMM only: ``binary_matmul_packed`` on operands packed beforehand (weights are packed once at
  load time in the runtime), on the benchmark's threads and on one thread
* ours, prepared: the same with B given as ``prepare_packed(pb, k)`` (B laid out once in the kernel's
  native layout, as the runtime does for its weights, instead of on every call)
* ours + packing the activations (``pack_signs`` of the float32 input each call, weights pre-packed:
  what an inference layer pays)
* ours + packing both operands (``binary_matmul`` straight from float32 +-1 arrays, values checked)
* ``torch.matmul`` in fp32 on the same +-1 values (``torch.set_num_threads`` to the same count)
* the naive XNOR kernel (one thread, no blocking or SIMD, portable popcount), timed on a share of the
  rows of A and scaled when the full run would be long (the output says which), plus the same loops
  with the POPCNT instruction as a stronger reference

GOPS count 2*M*N*K operations for every kernel. Results go to benchmarks/results/gemm.json and
gemm.md. The machine may be shared: medians are taken and the load average is recorded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lowbit.benchmarking import loadavg, machine_record, markdown_table, median, time_interleaved, write_results

RESULTS = Path(__file__).resolve().parent / "results"

CASES = [
    ("square 4096^3", 4096, 4096, 4096),
    ("MLP fc1 784->4096, batch 256", 256, 4096, 784),
    ("MLP fc2 4096->4096, batch 256", 256, 4096, 4096),
    ("MLP fc3 4096->10, batch 256", 256, 10, 4096),
    ("MLP fc1 784->4096, batch 1", 1, 4096, 784),
    ("MLP fc2 4096->4096, batch 1", 1, 4096, 4096),
    ("MLP fc3 4096->10, batch 1", 1, 10, 4096),
]


def timeit(fn, repeats, warm_each=1):
    """Median wall time of ``repeats`` runs of fn() (each after ``warm_each`` untimed runs)."""
    return median(time_interleaved({"fn": fn}, min_repeats=repeats, max_repeats=repeats, warmup=0,
                                   warm_each=warm_each)["fn"])


def bench_case(name, m, n, k, *, threads, torch, naive_budget_s, repeats, min_time, rng):
    import lowbit.kernels as K

    a = rng.choice(np.array([-1.0, 1.0], np.float32), size=(m, k))
    b = rng.choice(np.array([-1.0, 1.0], np.float32), size=(n, k))
    pa, pb = K.pack_bits(a), K.pack_bits(b)
    prep = K.prepare_packed(pb, k)
    out = np.empty((m, n), np.int32)
    ops = 2.0 * m * n * k
    row = {"case": name, "M": m, "N": n, "K": k, "threads": threads}

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    # round-robin; each contender warmed up right before its timed run, so it is timed with its own data in
    # cache, not with what the previous one left there (torch's fp32 operands evict our packed ones from L3)
    timed = time_interleaved(
        {
            "ours_gemm_s": lambda: K.binary_matmul_packed(pa, pb, k, out=out, num_threads=threads),
            "ours_gemm_1thread_s": lambda: K.binary_matmul_packed(pa, pb, k, out=out, num_threads=1),
            "ours_prepared_s": lambda: K.binary_matmul_packed(pa, prep, k, out=out, num_threads=threads),
            "ours_pack_act_s": lambda: K.binary_matmul_packed(K.pack_signs(a, num_threads=threads), pb, k, out=out,
                                                              num_threads=threads),
            "ours_pack_both_s": lambda: K.binary_matmul(a, b, num_threads=threads),
            "torch_fp32_s": lambda: torch.matmul(ta, tb.T),
        },
        min_repeats=repeats,
        min_time=min_time,
        max_repeats=1000,
        warmup=0,
        warm_each=1,
    )
    for key, times in timed.items():
        row[key] = median(times)
    row["repeats"] = len(timed["ours_gemm_s"])
    # exact check: fp32 sums of +-1 products are exact integers below 2^24
    ours = K.binary_matmul_packed(pa, pb, k, num_threads=threads)
    row["verified_equal_to_torch"] = bool(np.array_equal(ours, torch.matmul(ta, tb.T).numpy().astype(np.int32))) \
        and bool(np.array_equal(ours, K.binary_matmul_packed(pa, prep, k, num_threads=threads)))

    # naive (one thread): 3 full runs when short, one when its estimated time is within the budget,
    # else a share of A's rows timed once and scaled (every row of A costs the same)
    share = m
    while share > 1 and share * n * ((k + 63) // 64) > 2e7:
        share //= 2

    def time_naive(hw):
        one = lambda rows: K.binary_matmul_naive(pa[:rows], pb, k, hw_popcount=hw)  # noqa: E731
        t_share = timeit(lambda: one(share), 1, warm_each=0)
        estimate = t_share * m / share
        if estimate <= 1.0:
            return timeit(lambda: one(m), 3), "full run, median of 3"
        if estimate <= naive_budget_s:
            return timeit(lambda: one(m), 1, warm_each=0), "full run, once"
        return estimate, f"{share} of {m} rows of A timed once, scaled x{m / share:g}"

    row["naive_s"], row["naive_method"] = time_naive(False)
    if "popcnt" in K.available_paths():
        row["naive_popcnt_s"], row["naive_popcnt_method"] = time_naive(True)
    row["ours_gemm_gops"] = ops / row["ours_gemm_s"] / 1e9
    row["ours_prepared_gops"] = ops / row["ours_prepared_s"] / 1e9
    row["torch_fp32_gflops"] = ops / row["torch_fp32_s"] / 1e9
    row["naive_gops"] = ops / row["naive_s"] / 1e9
    row["speedup_vs_torch"] = row["torch_fp32_s"] / row["ours_gemm_s"]
    row["speedup_vs_torch_incl_pack_act"] = row["torch_fp32_s"] / row["ours_pack_act_s"]
    row["speedup_vs_torch_incl_pack_both"] = row["torch_fp32_s"] / row["ours_pack_both_s"]
    row["speedup_vs_naive"] = row["naive_s"] / row["ours_gemm_s"]
    row["speedup_vs_naive_1thread_each"] = row["naive_s"] / row["ours_gemm_1thread_s"]
    if "naive_popcnt_s" in row:
        row["speedup_vs_naive_popcnt"] = row["naive_popcnt_s"] / row["ours_gemm_s"]
    return row


def fmt_ms(s):
    return f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.1f}"


def markdown(report) -> str:
    m = report["machine"]
    rows = [[r["case"], f"{r['M']}x{r['N']}x{r['K']}", f"{fmt_ms(r['ours_gemm_s'])} ({r['ours_gemm_gops']:.0f})",
             f"{fmt_ms(r['ours_prepared_s'])} ({r['ours_prepared_gops']:.0f})", fmt_ms(r["ours_gemm_1thread_s"]),
             fmt_ms(r["ours_pack_act_s"]), fmt_ms(r["ours_pack_both_s"]),
             f"{fmt_ms(r['torch_fp32_s'])} ({r['torch_fp32_gflops']:.1f})", fmt_ms(r["naive_s"]),
             f"**{r['speedup_vs_torch']:.1f}x**",
             f"{r['speedup_vs_torch_incl_pack_act']:.1f}x / {r['speedup_vs_torch_incl_pack_both']:.1f}x",
             f"**{r['speedup_vs_naive']:.0f}x**", f"{r['speedup_vs_naive_1thread_each']:.0f}x",
             f"{r.get('speedup_vs_naive_popcnt', float('nan')):.0f}x"] for r in report["results"]]
    lines = [
        "# Binary GEMM benchmark",
        "",
        f"CPU: {m['cpu']} ({m['cpus']} logical CPUs; flags: {', '.join(m['cpu_flags'])}); "
        f"dispatch path **{m['kernel_path']}** (available: {', '.join(m['available_paths'])}); "
        f"{report['threads']} threads for ours and torch; naive: 1 thread.",
        f"Build: {m['build_flags']}. torch {m['torch']} (fp32, {report['threads']} threads), numpy {m['numpy']}, "
        f"Python {m['python']}. Load average at start / end: {m['loadavg']} / {m['loadavg_end']}.",
        "",
        "Times are medians in ms; GOPS = 2*M*N*K / time. *ours* = `binary_matmul_packed` on pre-packed operands; "
        "*prepared*: the same with B from `prepare_packed` (laid out once in the kernel's native layout); "
        "*+pack act* adds `pack_signs` of the float32 activations each call (weights packed once); "
        "*+pack both* is `binary_matmul` from float32 +-1 arrays. Speedups are torch time / our time "
        "(GEMM only unless noted) and naive time / our GEMM time; *1 thread each* compares our GEMM on one "
        "thread with the (one-thread) naive kernel, which stays meaningful when other processes occupy cores.",
        "",
        markdown_table(["case", "M x N x K", "ours ms (GOPS)", "prepared ms (GOPS)", "ours 1 thread ms", "+pack act ms",
                        "+pack both ms", "torch fp32 ms (GFLOP/s)", "naive ms", "x torch",
                        "x torch incl. pack act / both", "x naive", "x naive, 1 thread each", "x naive (POPCNT)"], rows),
    ]
    lines += ["", f"Statistic: {report['statistic']}.", "", "Naive kernel timing per case (portable popcount / POPCNT):"]
    lines += [f"- {r['case']}: {r['naive_method']} / {r.get('naive_popcnt_method', 'n/a')}" for r in report["results"]]
    lines += ["", f"All results checked equal to torch's: {all(r['verified_equal_to_torch'] for r in report['results'])}.",
              "", f"Reproduce: `{report['command']}`", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for ours and torch (default 2)")
    parser.add_argument("--repeats", type=int, default=7, help="minimum timed rounds per case")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="keep adding rounds until a case has taken this many seconds (more rounds for small cases)")
    parser.add_argument("--naive-budget", type=float, default=40.0,
                        help="run the naive kernel in full when its estimated time is below this many seconds")
    parser.add_argument("--quick", action="store_true", help="small shapes only (smoke test), results not written")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    cases = [c for c in CASES if c[1] * c[2] * c[3] <= 256 * 4096 * 784] if args.quick else CASES
    machine = machine_record(args.threads)
    machine["build_flags"] = ("-O3 -std=c11 -pthread, no -march; AVX2 / AVX-512 code via __attribute__((target)) "
                              "picked at run time with __builtin_cpu_supports")
    print(f"CPU {machine['cpu']}, path {machine['kernel_path']}, {args.threads} threads, "
          f"load {machine['loadavg']}", flush=True)
    rng = np.random.default_rng(0)
    results = []
    for name, m, n, k in cases:
        row = bench_case(name, m, n, k, threads=args.threads, torch=torch, naive_budget_s=args.naive_budget,
                         repeats=args.repeats, min_time=args.min_time, rng=rng)
        results.append(row)
        print(f"{name:32s} {m}x{n}x{k}: ours {fmt_ms(row['ours_gemm_s'])} ms ({row['ours_gemm_gops']:.0f} GOPS), "
              f"prepared {fmt_ms(row['ours_prepared_s'])} ms, "
              f"+pack act {fmt_ms(row['ours_pack_act_s'])} ms, +pack both {fmt_ms(row['ours_pack_both_s'])} ms | "
              f"torch {fmt_ms(row['torch_fp32_s'])} ms ({row['torch_fp32_gflops']:.1f} GFLOP/s) | "
              f"naive {fmt_ms(row['naive_s'])} ms [{row['naive_method']}] | "
              f"x{row['speedup_vs_torch']:.1f} torch, x{row['speedup_vs_naive']:.0f} naive, "
              f"x{row['speedup_vs_naive_1thread_each']:.0f} naive (1 thread each), "
              f"x{row.get('speedup_vs_naive_popcnt', float('nan')):.0f} naive-popcnt | "
              f"equal {row['verified_equal_to_torch']}", flush=True)
    machine["loadavg_end"] = loadavg()
    report = {
        "benchmark": "binary GEMM (XNOR + popcount) vs torch.matmul fp32 vs naive XNOR kernel",
        "threads": args.threads,
        "ops_counted": "2*M*N*K for every kernel",
        "statistic": f"median of >= {args.repeats} rounds (and >= {args.min_time} s per case), ours and torch run "
                 "round-robin, each warmed up right before its timed run; naive as noted per case",
        "command": "python benchmarks/bench_gemm.py" + (f" --threads {args.threads}" if args.threads != 2 else ""),
        "machine": machine,
        "results": results,
    }
    if not args.quick:
        paths = write_results(args.out_dir / "gemm", report, markdown(report))
        print(f"wrote {paths[0]} and {paths[1]}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
