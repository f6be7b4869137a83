"""The one benchmark harness: timer, machine record, results writer (no torch import).

Every script in ``benchmarks/`` and ``lowbit bench --run`` (:mod:`lowbit.bench`) measure and report with it:

* :func:`time_interleaved` -- wall times of several contenders, run round-robin (a, b, c, a, b, c, ...) so
  that load from other processes on a shared machine hits every contender alike; :func:`median`,
  :func:`medians` reduce them.
* :func:`machine_record` -- CPU model, the CPU flags the kernel dispatch looks at, the kernel path lowbit
  uses, thread count, Python / NumPy / torch versions and the load average (no host name).
* :func:`write_results` -- ``STEM.json`` and ``STEM.md``, each written atomically;
  :func:`markdown_table` builds the tables; :func:`command_line` and :func:`write_report` (the report of a
  script, closed by the line that reproduces it).
* :func:`results_dir` -- where the committed results live (what ``lowbit bench`` prints).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

from .fileio import atomic_write

# CPU flags (as /proc/cpuinfo spells them) that lowbit's kernel dispatch or its candidates look at.
DISPATCH_FLAGS = ("popcnt", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq", "avx512_vnni",
                  "avx_vnni", "avx512_bitalg")
RESULTS_ENV = "LOWBIT_BENCH_RESULTS"


# ---- timing -------------------------------------------------------------------------------------------------

def time_interleaved(fns: Mapping[str, Callable[[], object]], *, min_repeats: int = 5, min_time: float = 0.0,
                     max_repeats: int = 1000, warmup: int = 1, warm_each: int = 0,
                     settle: float = 0.0) -> Dict[str, List[float]]:
    """Wall times (seconds) of each ``fns[name]()``, measured in rounds: every round calls each contender
    once, in the order given, so load drifts hit all of them alike.

    ``warmup`` untimed rounds come first. Then rounds are timed until there are ``min_repeats`` of them
    and, beyond that, until ``min_time`` seconds have passed (at most ``max_repeats`` rounds).
    ``warm_each`` untimed calls of a contender precede each of its timed calls, so it is timed with its
    own data in cache, not with what the previous contender left there. ``settle`` (seconds): before each
    timed call the contender also runs untimed for at least this long, so the previous contender's
    thread pool (torch's and onnxruntime's OpenMP workers spin-wait for milliseconds after a call) has
    gone idle and does not take cores from the one being timed. Returns ``{name: [seconds, ...]}``.
    """
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(f"need 1 <= min_repeats <= max_repeats, got {min_repeats} and {max_repeats}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_repeats or (rounds < max_repeats and time.perf_counter() - start < min_time):
        for name, fn in fns.items():
            for _ in range(warm_each):
                fn()
            if settle > 0:
                until = time.perf_counter() + settle
                while time.perf_counter() < until:
                    fn()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        rounds += 1
    return times


# probe kinds (csrc/qgemm_probe.c)
PROBE_NAMES = {0: "vpdpbusd zmm", 1: "vpand+vpopcntq+vpaddq zmm", 2: "vpxor+vpopcntq+vpaddq zmm",
               3: "vpmaddubsw+vpmaddwd+vpaddd ymm", 4: "vpand+nibble-lut popcount ymm", 5: "vfmadd231ps zmm",
               6: "tdpbusd amx tile", 7: "amx 32x32 block, tiles from L1"}


def probe_peaks(threads: int, seconds: float = 0.15) -> dict:
    """GOPS of each probe on `threads` threads at once (the C loops release the GIL)."""
    import threading

    from .kernels import _bitgemm

    peaks = {}
    for kind, name in PROBE_NAMES.items():
        t, ops = _bitgemm.qg_probe(kind, 1000)
        if t < 0:
            continue
        iters = max(1000, int(1000 * seconds / max(t, 1e-6)))
        results = [None] * threads

        def run(i):
            results[i] = _bitgemm.qg_probe(kind, iters)

        ths = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        peaks[name] = sum(ops / t for t, ops in results) / 1e9
    return peaks


def median(times: Sequence[float]) -> float:
    """The median of a list of times."""
    return statistics.median(times)


def medians(times: Mapping[str, Sequence[float]]) -> Dict[str, float]:
    """``{name: median}`` of :func:`time_interleaved`'s result."""
    return {name: statistics.median(ts) for name, ts in times.items()}


# ---- the machine --------------------------------------------------------------------------------------------

def _cpuinfo() -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model(fields: Optional[Dict[str, str]] = None) -> str:
    """'model name' with family / model / stepping (VMs often hide the exact model: family 25 model 1 is
    AMD Zen 3 "Milan")."""
    fields = _cpuinfo() if fields is None else fields
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    if "cpu family" in fields:
        name += (f" (family {fields['cpu family']}, model {fields.get('model', '?')}, "
                 f"stepping {fields.get('stepping', '?')})")
    return name


def loadavg() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_record(threads: Optional[int] = None) -> dict:
    """What a results file records about the machine: ``cpu``, ``cpu_flags`` (those of
    :data:`DISPATCH_FLAGS` the CPU has), ``kernel_path`` / ``available_paths`` (None where the C extension
    is missing), ``cpus``, ``threads`` (given, else torch's if torch is imported, else the kernels'),
    ``platform`` (OS and architecture, no host name), ``python``, ``numpy``, ``torch`` and ``device`` (None
    unless torch is already imported: this never imports it) and ``loadavg``."""
    fields = _cpuinfo()
    have = set(fields.get("flags", "").split())
    kernel_path = available = dispatch_flags = None
    kernel_threads = None
    try:
        from . import kernels

        kernel_path, available = kernels.active_path(), list(kernels.available_paths())
        dispatch_flags = list(kernels.cpu_features())  # what the kernels' own cpuid check found
        kernel_threads = kernels.get_num_threads()
    except Exception:  # the C extension is not built, or a bad LOWBIT_KERNEL_PATH: record, do not fail
        pass
    torch = sys.modules.get("torch")
    torch_version = device = None
    if torch is not None and hasattr(torch, "__version__"):
        torch_version = torch.__version__
        try:
            device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        except Exception:
            device = "cpu"
        if threads is None:
            threads = torch.get_num_threads()
    numpy = sys.modules.get("numpy")
    if numpy is None:
        try:
            import numpy
        except ImportError:
            numpy = None
    return {
        "cpu": cpu_model(fields),
        "cpu_flags": [f for f in DISPATCH_FLAGS if f in have],
        "dispatch_flags": dispatch_flags,
        "kernel_path": kernel_path,
        "available_paths": available,
        "cpus": os.cpu_count(),
        "threads": threads if threads is not None else kernel_threads,
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "numpy": getattr(numpy, "__version__", None),
        "torch": torch_version,
        "device": device,
        "loadavg": loadavg(),
    }


# ---- writing ------------------------------------------------------------------------------------------------

_ALIGN = {"l": "---", "r": "---:", "c": ":---:"}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: Union[str, None] = None) -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` (default), ``r`` or ``c``."""
    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(headers)} columns")
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join(_ALIGN[a] for a in align) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_results(stem: Union[str, Path], data: dict, markdown: str) -> List[Path]:
    """Write ``STEM.json`` (``data``, indented) and ``STEM.md`` (``markdown``), each atomically (a reader
    never sees half a file); creates the folder. Returns the two paths."""
    stem = Path(stem)
    paths = [stem.parent / (stem.name + ".json"), stem.parent / (stem.name + ".md")]
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(paths[0], lambda f: f.write(text.encode()))
    md = markdown if markdown.endswith("\n") else markdown + "\n"
    atomic_write(paths[1], lambda f: f.write(md.encode()))
    return paths


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that reruns ``benchmarks/SCRIPT`` with ``argv`` (default: this process's arguments)."""
    return f"python benchmarks/{script} " + shlex.join(argv if argv is not None else sys.argv[1:])


def write_report(stem: Union[str, Path], result: dict, md: List[str]) -> int:
    """A benchmark script's last step: ``md`` closed by the line that reproduces it (``result['command']``),
    :func:`write_results`, a note of what was written; returns 0 (the script's exit status)."""
    write_results(stem, result, "\n".join(md + ["", f"Reproduce: `{result['command']}`", ""]))
    print(f"wrote {Path(stem).with_suffix('.json')} and .md")
    return 0


def results_dir() -> Optional[Path]:
    """Where committed benchmark results live: ``$LOWBIT_BENCH_RESULTS`` when set, else ``benchmarks/results``
    of the source checkout this package is imported from (when it exists), else None."""
    env = os.environ.get(RESULTS_ENV, "").strip()
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    return checkout if checkout.is_dir() else None


# ---- reading ------------------------------------------------------------------------------------------------

_HEADLINE_WORDS = ("acc", "speed", "perplexity", "bpc", "ratio", "x ", "change")


def _cells(line: str) -> List[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def headline(markdown: str, width: int = 110) -> str:
    """One line from a results file: the first row of its first table, as ``label: header value, ...`` (its
    bold cells, else those under a header about accuracy, speed or perplexity, else the first; three at
    most), cut to ``width`` characters; else its title."""
    lines = markdown.splitlines()
    for i in range(len(lines) - 2):
        if lines[i].lstrip().startswith("|") and set(lines[i + 1].strip()) <= set("|-: ") and \
                lines[i + 2].lstrip().startswith("|"):
            header, row = _cells(lines[i]), _cells(lines[i + 2])
            labelled = any(c.isalpha() for c in row[0])  # a run's name, else the row starts with a figure
            pairs = list(zip(header, row))[1 if labelled else 0:]
            shown = ([(h, v.replace("**", "")) for h, v in pairs if "**" in v]
                     or [(h, v) for h, v in pairs if v and labelled and any(w in h.lower() for w in _HEADLINE_WORDS)]
                     or [(h, v) for h, v in pairs if v])[:3]
            text = (f"{row[0]}: " if labelled else "") + ", ".join(f"{h} {v}" for h, v in shown)
            break
    else:
        title = next((x.lstrip("# ").strip() for x in lines if x.startswith("#")), "")
        text = title or next((x.strip() for x in lines if x.strip()), "")
    return text if len(text) <= width else text[:width - 3] + "..."


def summarize_results(folder: Path, files: Sequence[Path]) -> str:
    """What ``lowbit bench`` prints: one line per results file (name, its headline)."""
    folder = Path(folder)
    width = max(len(f.name) for f in files)
    lines = [f"Benchmark results in {folder} ({len(files)} files; 'lowbit bench --show NAME' prints one in full):"]
    for f in files:
        try:
            text = headline(f.read_text(errors="replace"))
        except OSError as e:
            text = f"(unreadable: {e.strerror})"
        lines.append(f"  {f.name:{width}s}  {text}")
    return "\n".join(lines)
