"""The longer model-file fuzz campaign (the CI test, tests/test_model_fuzz.py, runs a few hundred mutants).

For a small exported model of each kind (graph image network, integer LSTM, integer GRU): ``--damaged``
byte-level mutants (bit flips, cuts, header digit edits) must predict exactly as the original or raise a
LowbitError; ``--crafted`` valid-checksum mutants (one metadata field or array replaced) must run or raise
a LowbitError. Counts: mutants tried, named errors, same predictions, other runs (crafted only), silent wrong
results (damaged only; must be 0), other exceptions (must be 0). A crash would end the script.

    python benchmarks/model_fuzz.py [--damaged 2000] [--crafted 1000] [--seed 0]
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from model_fuzz import build_models, damaged, mutants, outcome  # noqa: E402

from lowbit.benchmarking import machine_record, markdown_table, results_dir, write_results  # noqa: E402
from lowbit.errors import LowbitError  # noqa: E402
from lowbit.runtime import load_model_file, save_model_file  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--damaged", type=int, default=2000)
    p.add_argument("--crafted", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kind, (path, x) in build_models(tmp).items():
            ref = outcome(path, x)
            for family in ("damaged", "crafted"):
                c = {"kind": kind, "family": family, "tried": 0, "named_errors": 0, "same": 0, "other_runs": 0,
                     "silent_wrong": 0, "other_exceptions": 0, "examples": []}
                rng = np.random.default_rng(args.seed)
                if family == "damaged":
                    gen = ((w, b, None) for w, b in damaged(path.read_bytes(), rng, args.damaged))
                else:
                    fk, meta, arrays = load_model_file(path)
                    gen = ((w, None, (m, a)) for w, m, a in mutants(meta, arrays, rng, args.crafted))
                for what, blob, crafted in gen:
                    target = tmp / "mutant.lbt"
                    if blob is not None:
                        target.write_bytes(blob)
                    else:
                        try:
                            save_model_file(target, fk, *crafted)
                        except (TypeError, ValueError, LowbitError):
                            continue
                    c["tried"] += 1
                    got = outcome(target, x)
                    if isinstance(got, LowbitError):
                        c["named_errors"] += 1
                    elif isinstance(got, BaseException):
                        c["other_exceptions"] += 1
                        c["examples"].append(f"{what}: {type(got).__name__}: {got}"[:200])
                    elif all(np.array_equal(a, b) for a, b in zip(got, ref)):
                        c["same"] += 1
                    elif family == "damaged":
                        c["silent_wrong"] += 1
                        c["examples"].append(f"{what}: different predictions")
                    else:
                        c["other_runs"] += 1
                records.append(c)
                rows.append([kind, family, c["tried"], c["named_errors"], c["same"], c["other_runs"], c["silent_wrong"],
                             c["other_exceptions"]])
                print(" | ".join(map(str, rows[-1])), flush=True)
    machine = machine_record()
    md = "\n".join([f"# Model-file fuzz campaign ({machine['cpu']})", "",
                    "damaged: bytes flipped / cut / header digits edited (checksum not recomputed): same predictions "
                    "or a named error. crafted: one field or array replaced in a valid file: runs (another model) or "
                    "a named error.", "",
                    markdown_table(["kind", "mutants", "tried", "named errors", "same", "ran (crafted)",
                                    "silent wrong", "other exceptions"], rows, "llrrrrrr"), "",
                    f"Reproduce: `python benchmarks/model_fuzz.py --damaged {args.damaged} --crafted {args.crafted} "
                    f"--seed {args.seed}`"]) + "\n"
    out = results_dir()
    if out is not None:
        for path in write_results(out / "model_fuzz", {"machine": machine, "args": vars(args), "results": records}, md):
            print("wrote", path)
    bad = sum(r["silent_wrong"] + r["other_exceptions"] for r in records)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
