"""One demo-recipe tuning run on the development set (phantom dataset seed 0).

Runs the demo's two arms (``DEMO_VARIANTS``: the cross-entropy baseline and the unified
approach) under the demo's nested cross-validation with ``DEMO_CONFIG`` changed by
``--recipe`` (JSON) and the phantom's dataset seed forced to 0, then appends the run
(recipe, mean test-fold DSC of both arms on the development set, CPU time, provenance) to
``benchmarks/results/quality/demo_tuning.json``. The rule and the runs are described in
docs/evaluation.md ("Demo recipe tuning"). Never point it at the reported seed.

    python benchmarks/tune_demo.py --name R1 --recipe '{"lr": 0.05}' --out /tmp/tune-R1
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

DEV_SEED = 0
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "quality", "demo_tuning.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="label of this tuning run")
    p.add_argument("--recipe", default="{}", help="JSON changes to DEMO_CONFIG (not its dataset seed)")
    p.add_argument("--note", default="", help="why this run was made")
    p.add_argument("--out", required=True, help="output folder of the run (replaced)")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from unimri.commands import DEMO_CONFIG
    from unimri.runtime.provenance import Stopwatch
    from unimri.studies.ablation import DEMO_VARIANTS, run_variants
    from unimri.train.config import TrainConfig

    torch.set_num_threads(1)
    changes = json.loads(args.recipe)
    if "dataset_kwargs" in changes and changes["dataset_kwargs"].get("seed", DEV_SEED) != DEV_SEED:
        raise SystemExit("tuning runs use the development set (phantom seed 0) only")
    kwargs = {**DEMO_CONFIG["dataset_kwargs"], **changes.pop("dataset_kwargs", {}), "seed": DEV_SEED}
    config = {**DEMO_CONFIG, **changes, "dataset_kwargs": kwargs}
    cfg = TrainConfig.from_dict({**config, "progress": False}).validate()
    stopwatch = Stopwatch()
    cells = run_variants(cfg, DEMO_VARIANTS, ["unet"], args.out, overwrite=True, study="demo",
                         column="Method", jobs=args.jobs)
    prov = stopwatch.record()
    arms = {}
    for cell in cells:
        run = cell.result
        folds = [float(f["DSC"]) for f in run.folds]
        arms[cell.variant] = {"test_dsc_mean": sum(folds) / len(folds), "test_dsc_folds": folds}
    entry = {"name": args.name, "note": args.note, "recipe": config, "dev_set": "phantom dataset seed 0",
             "arms": arms, "provenance": prov,
             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    record = {"format": "unimri-demo-tuning-1", "runs": []}
    if os.path.isfile(RESULTS):
        with open(RESULTS) as fh:
            record = json.load(fh)
    record["runs"] = [r for r in record["runs"] if r["name"] != args.name] + [entry]
    with open(RESULTS, "w") as fh:
        json.dump(record, fh, indent=1)
        fh.write("\n")
    print(json.dumps({"name": args.name, **{k: round(v["test_dsc_mean"], 3) for k, v in arms.items()},
                      "cpu_s": prov.get("cpu_seconds"), "wall_s": prov.get("wall_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
