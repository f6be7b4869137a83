"""The benchmark harness (lowbit.benchmarking) and the `lowbit bench` command."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, subprocess_env
from lowbit import benchmarking as B


def _recorder(calls, name):
    return lambda: calls.append(name)


def test_time_interleaved_round_robin_and_counts():
    calls = []
    fns = {n: _recorder(calls, n) for n in ("a", "b", "c")}
    times = B.time_interleaved(fns, min_repeats=4, max_repeats=4, warmup=2)
    assert calls == ["a", "b", "c"] * (2 + 4)  # 2 untimed rounds, then 4 timed ones, always a, b, c
    assert {n: len(ts) for n, ts in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for ts in times.values() for t in ts)

    calls.clear()
    times = B.time_interleaved(fns, min_repeats=2, max_repeats=2, warmup=0, warm_each=1)
    assert calls == ["a", "a", "b", "b", "c", "c"] * 2  # each timed call right after its own warm-up call
    assert [len(ts) for ts in times.values()] == [2, 2, 2]


def test_time_interleaved_min_time_and_cap():
    calls = []
    times = B.time_interleaved({"x": _recorder(calls, "x")}, min_repeats=1, min_time=60.0, max_repeats=7, warmup=0)
    assert len(times["x"]) == 7 == len(calls)  # min_time not reached: stopped by max_repeats
    times = B.time_interleaved({"x": lambda: None}, min_repeats=3, min_time=0.0, max_repeats=100, warmup=0)
    assert len(times["x"]) == 3
    assert B.median([3.0, 1.0, 2.0]) == 2.0 and B.medians({"a": [1.0, 5.0, 2.0]}) == {"a": 2.0}
    with pytest.raises(ValueError):
        B.time_interleaved({"x": lambda: None}, min_repeats=5, max_repeats=2)


def test_machine_record_keys():
    m = B.machine_record(threads=3)
    for key in ("cpu", "cpu_flags", "kernel_path", "available_paths", "cpus", "threads", "platform", "python",
                "numpy", "torch", "device", "loadavg"):
        assert key in m, key
    assert m["threads"] == 3 and isinstance(m["cpu"], str) and set(m["cpu_flags"]) <= set(B.DISPATCH_FLAGS)
    json.dumps(m)  # serializable as it is
    import platform

    assert platform.node() not in json.dumps(m) or not platform.node()  # no host name


def test_machine_record_does_not_import_torch():
    code = ("import sys; from lowbit.benchmarking import machine_record; m = machine_record(); "
            "assert 'torch' not in sys.modules; assert m['torch'] is None; print(m['cpu'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert r.returncode == 0, r.stderr


def test_write_results_round_trips_atomically(tmp_path, monkeypatch):
    data = {"results": [{"x": 1.5, "name": "a"}], "machine": {"cpu": "c"}}
    md = "# T\n\n" + B.markdown_table(["a", "b"], [[1, "**2x**"]], "lr")
    paths = B.write_results(tmp_path / "sub" / "bench", data, md)
    assert [p.name for p in paths] == ["bench.json", "bench.md"]
    assert json.loads(paths[0].read_text()) == data
    assert paths[1].read_text() == md + "\n"
    assert md.splitlines()[2:] == ["| a | b |", "|---|---:|", "| 1 | **2x** |"]

    # a failure while writing leaves the old files whole and no temporary file behind
    import lowbit.fileio as fileio

    def failing(path, write_fn):
        class Boom(Exception):
            pass

        def broken(f):
            f.write(b"partial")
            raise Boom()

        return real(path, broken)

    real = fileio.atomic_write
    monkeypatch.setattr(B, "atomic_write", failing)
    with pytest.raises(Exception):
        B.write_results(tmp_path / "sub" / "bench", {"other": 1}, "other")
    assert json.loads(paths[0].read_text()) == data
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["bench.json", "bench.md"]


def test_headline_picks_the_first_row():
    md = "# X\n\ntext\n\n| case | ms | x torch |\n|---|---:|---:|\n| big | 3.0 | **10.7x** |\n| small | 1 | 2x |\n"
    assert B.headline(md) == "big: x torch 10.7x"
    assert B.headline("# Only a title\n\nno table") == "Only a title"


def test_results_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(B.RESULTS_ENV, raising=False)
    checkout = Path(B.__file__).resolve().parents[2] / "benchmarks" / "results"
    # the checkout beside src/lowbit when lowbit is imported from it; none for an installed copy (CI)
    assert B.results_dir() == (checkout if checkout.is_dir() else None)
    monkeypatch.setenv(B.RESULTS_ENV, str(tmp_path))
    assert B.results_dir() == tmp_path


def _bench(*args, cwd, **env):
    return subprocess.run([sys.executable, "-m", "lowbit", "bench", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60, env=subprocess_env(**env))


def test_lowbit_bench_summary_from_another_directory(tmp_path):
    # lowbit imported from this checkout (src/ first), run from elsewhere: it finds the checkout's results
    src = {"PYTHONPATH": str(REPO / "src")}
    r = _bench(cwd=tmp_path, **src)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.encode()) < 4096
    assert str(REPO / "benchmarks" / "results") in r.stdout
    names = sorted(p.name for p in (REPO / "benchmarks" / "results").glob("*.md"))
    assert len(r.stdout.strip().splitlines()) == 1 + len(names)
    assert all(n in r.stdout for n in names)

    r = _bench("--show", "runtime", cwd=tmp_path, **src)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (REPO / "benchmarks" / "results" / "runtime.md").read_text()

    r = _bench("--show", "no-such-result", cwd=tmp_path, **src)
    assert r.returncode == 2 and "runtime" in r.stderr and "Traceback" not in r.stderr


def test_lowbit_bench_without_results_says_where_it_looked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _bench(cwd=tmp_path, LOWBIT_BENCH_RESULTS=str(empty))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(empty) in r.stderr and "lowbit bench --run" in r.stderr


def test_lowbit_bench_installed_without_the_source_tree(tmp_path, monkeypatch, capsys):
    from lowbit import cli

    monkeypatch.delenv(B.RESULTS_ENV, raising=False)
    monkeypatch.setattr(B, "results_dir", lambda: None)
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert B.RESULTS_ENV in err and "benchmarks" in err and "lowbit bench --run" in err


def test_settle_runs_each_contender_untimed_before_its_timed_call():
    from lowbit.benchmarking import time_interleaved

    calls = {"a": 0, "b": 0}
    order = []

    def make(name):
        def fn():
            calls[name] += 1
            order.append(name)
        return fn

    times = time_interleaved({"a": make("a"), "b": make("b")}, min_repeats=3, max_repeats=3, warmup=0, settle=0.005)
    assert [len(times[k]) for k in "ab"] == [3, 3]
    assert calls["a"] > 3 and calls["b"] > 3  # untimed settling calls happened
    # each contender's settling calls run right before its timed call: the order is runs of a then runs of b
    runs = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]
    assert runs == ["a", "b"] * 3
