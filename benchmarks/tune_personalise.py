"""Choose a bundle's fine-tuning defaults on the users' VALIDATION parts only.

Runs the device path (``edge-sdfa finetune``) with candidate overrides on the benchmark's users and
prints, per candidate, the validation accuracy the gate selected on, the holdout drop and how many
runs were committed. The users' test parts are never printed or used here (the reported ``after``
figures come from ``personalise.py`` with the chosen defaults).

    python benchmarks/tune_personalise.py --users events_rotation_jitter,events_hot_polarity_noise \
        --seeds 0,1 --candidate "--lr 0.3" --candidate "--lr 0.15 --epochs 40"
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import personalise as bench  # noqa: E402

VALIDATION_KEYS = ("validation_before", "validation_after", "holdout_before", "holdout_after", "committed",
                   "best_epoch", "seconds")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", required=True, help="comma separated user names")
    ap.add_argument("--seeds", default="0", help="comma separated seeds")
    ap.add_argument("--candidate", action="append", default=[], help="finetune options ('' = bundle defaults)")
    ap.add_argument("--candidate-defaults", action="append", default=[],
                    help="JSON merged into the bundle's fine-tuning defaults (a candidate per-network default)")
    args = ap.parse_args(argv)
    wanted = args.users.split(",")
    suites = []
    if any(u.startswith("digits") for u in wanted):
        suites.append(bench.digits_suite())
    if any(u.startswith("events") for u in wanted):
        suites.append(bench.events_suite())
    candidates = [(c, None) for c in args.candidate] + [("", json.loads(d)) for d in args.candidate_defaults]
    for cand, overrides in candidates or [("", None)]:
        for bundle_dir, users in suites:
            with tempfile.TemporaryDirectory(prefix="tune-") as tmp:
                if overrides:
                    bundle_dir = bench.bundle_variant(bundle_dir, overrides, Path(tmp))
                for user in (u for u in wanted if u in users):
                    data = users[user]
                    runs = []
                    for seed in (int(s) for s in args.seeds.split(",")):
                        parts = bench.user_parts(data, seed)
                        bench.check_disjoint(parts, data["source"])
                        res = bench.run_device(bundle_dir, data, parts, seed, shlex.split(cand))
                        runs.append({k: res[k] for k in VALIDATION_KEYS})
                    print(json.dumps({"candidate": cand, "defaults": overrides, "user": user,
                                      "validation_after": float(np.mean([r["validation_after"] for r in runs])),
                                      "holdout_drop": float(np.mean([r["holdout_before"] - r["holdout_after"]
                                                                     for r in runs])),
                                      "committed_runs": sum(bool(r["committed"]) for r in runs), "runs": runs}),
                          flush=True)


if __name__ == "__main__":
    main()
