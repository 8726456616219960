"""Choose the share of new members added to an ensemble recipe, on the validation split.

    python -m tools.ensemble_weights --grid configs/experiments/*.toml --data ../shared/nih \\
        --base ens_vgg_mnv2x2_tta_mnv2 --add lite0_224_fbn --shares 0 0.2 0.3 0.4 0.5 0.6 0.7

Each member's validation logits are computed once per number of test-time
views (1 and 6; cached in ``<runs>/_val_logits``). A row adds the members of
``--add`` to the base ensemble recipe with one share ``w`` of the logit mean
(split equally between them, all with the same views): the base members keep
their weights, scaled by ``1 - w``. Mean AUROC is the harness's (mean over the
findings with positives on validation), and each row also gives its paired
difference from the base ensemble with a patient-bootstrap 95% interval (the
same resamples of patients for both). The chosen rows are then declared as
``kind = "ensemble"`` recipes and measured by ``python -m training.experiment``
(CI, T(IoBB), wall time). The best of a grid is chosen on the very numbers it
reports, so its validation lead is optimistic: keep grids small.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def combine(logits: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The ensemble's raw probabilities: sigmoid of the weighted mean logit (weights normalised), as the Predictor."""
    shares = np.asarray(weights, dtype=float)
    shares = shares / shares.sum()
    z = sum(w * np.asarray(x, dtype=np.float64) for w, x in zip(shares, logits))
    return 1.0 / (1.0 + np.exp(-z))


def paired_bootstrap(y: np.ndarray, base: np.ndarray, other: np.ndarray, groups, *, n_boot: int = 1000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean-AUROC difference ``other - base`` and its patient-bootstrap 95% bounds (same resamples for both)."""
    from cxr_core.evaluation.metrics import auroc, macro_mean

    def mean_auroc(rows, scores):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resample without a finding's positives leaves it out of the mean
            return macro_mean(auroc(y[rows], scores[rows]))

    everything = np.arange(len(y))
    point = mean_auroc(everything, other) - mean_auroc(everything, base)
    groups = pd.Series(np.asarray(groups))
    patients = groups.unique()
    rows_of = {p: np.flatnonzero(groups.to_numpy() == p) for p in patients}
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_boot):
        rows = np.concatenate([rows_of[p] for p in rng.choice(patients, size=len(patients), replace=True)])
        deltas.append(mean_auroc(rows, other) - mean_auroc(rows, base))
    low, high = np.nanpercentile(deltas, [2.5, 97.5])
    return float(point), float(low), float(high)


def grid_rows(y: np.ndarray, groups, base_logits: list[np.ndarray], base_weights: list[float],
              added: dict[int, list[np.ndarray]], shares: list[float], *, n_boot: int = 1000) -> pd.DataFrame:
    """One row per (views, share): validation mean AUROC and its paired difference from the base ensemble.

    Args:
        y: validation labels (n, 14).
        groups: patient id per row.
        base_logits: the base members' logits (n, 14) each, with their own views.
        base_weights: their weights.
        added: ``{views: [logits of each added member with that many views]}``.
        shares: the added members' total share of the logit mean (0 is the base ensemble).
    """
    from cxr_core.evaluation.metrics import auroc, macro_mean

    base = combine(base_logits, base_weights)
    total = float(np.sum(base_weights))
    rows = []
    for views, logits in added.items():
        for share in shares:
            if share >= 1:
                weights = [0.0] * len(base_weights) + [1.0] * len(logits)
            else:
                weights = [w / total * (1 - share) for w in base_weights] + [share / len(logits)] * len(logits)
            scores = combine(base_logits + logits, weights)
            delta, low, high = paired_bootstrap(y, base, scores, groups, n_boot=n_boot)
            rows.append({"views": views, "share": share, "weights": [round(w, 4) for w in weights],
                         "val_mean_auroc": macro_mean(auroc(y, scores)), "delta": delta, "delta_low": low,
                         "delta_high": high})
    return pd.DataFrame(rows)


def member_logits(bundle: Path, views: int, paths: list[str], cache: Path) -> np.ndarray:
    """A single-model bundle's logits (n, 14) over ``paths`` with 1 or 6 test-time views, cached by model file."""
    model_file = bundle / "model.keras"
    stat = model_file.stat()
    key = {"bundle": str(bundle), "views": views, "size": stat.st_size, "mtime": stat.st_mtime, "n": len(paths),
           "first": paths[0], "last": paths[-1]}
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{bundle.as_posix().strip('/').replace('/', '__')}_v{views}.npz"
    if target.is_file():
        stored = np.load(target, allow_pickle=False)
        if json.loads(str(stored["key"])) == key:
            return stored["logits"]
    from cxr_core.bundle.format import Bundle
    from cxr_core.jobs.bundle_evaluation import predict_rows
    from cxr_core.serving.predictor import Member, Predictor

    loaded = Bundle.load(bundle)
    predictor = Predictor(members=[Member(model=loaded.model, preprocess=loaded.preprocessing, tta_views=views)])
    raw = np.clip(predict_rows(predictor, paths), 1e-7, 1 - 1e-7)
    logits = np.log(raw) - np.log1p(-raw)
    np.savez(target, logits=logits, key=json.dumps(key))
    log.info("%s, %d views: logits of %d validation images", bundle, views, len(paths))
    return logits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.ensemble_weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", nargs="+", required=True, help="recipe TOML files (the base ensemble and its members)")
    parser.add_argument("--data", required=True, help="NIH folder with the validation images")
    parser.add_argument("--runs", default="runs/exp", help="folder of ensemble bundles (default runs/exp)")
    parser.add_argument("--base", required=True, help="the ensemble recipe to add members to")
    parser.add_argument("--add", nargs="+", required=True, help="recipe names of the members to add")
    parser.add_argument("--shares", nargs="+", type=float, default=[0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                        help="the added members' total share of the logit mean")
    parser.add_argument("--views", nargs="+", type=int, default=[1, 6], help="test-time views of the added members")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", help="CSV of the rows (default: printed only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from cxr_core.bundle.format import Bundle
    from cxr_core.data.dataset import NIHDataset
    from cxr_core.experiments.harness import read_recipe, recipe_bundle

    runs = Path(args.runs)
    recipes = {r.name: r for r in map(read_recipe, args.grid)}
    missing = [n for n in [args.base, *args.add] if n not in recipes]
    if missing:
        print(f"not recipes of --grid: {missing}", file=sys.stderr)
        return 2
    base = recipes[args.base]
    if base.kind != "ensemble":
        print(f"{args.base} is not an ensemble recipe", file=sys.stderr)
        return 2
    base_bundles = [recipe_bundle(recipes[m], runs) for m in base.members]
    added_bundles = [recipe_bundle(recipes[m], runs) for m in args.add]
    splits = Bundle.load(base_bundles[0], load_model=False).splits
    for bundle in base_bundles[1:] + added_bundles:
        other = Bundle.load(bundle, load_model=False).splits
        if not other[["image", "split"]].sort_values("image").reset_index(drop=True).equals(
                splits[["image", "split"]].sort_values("image").reset_index(drop=True)):
            print(f"{bundle} was trained on another split than {base_bundles[0]}", file=sys.stderr)
            return 2
    dataset = NIHDataset(args.data)
    rows = dataset.csv["image"].isin(set(splits.loc[splits["split"] == "val", "image"])).to_numpy()
    paths = dataset.csv.loc[rows, "path"].tolist()
    y, groups = dataset.labels[rows], dataset.csv.loc[rows, "patient_id"].to_numpy()
    cache = runs / "_val_logits"
    views = list(base.tta_views) or [1] * len(base.members)
    base_logits = [member_logits(b, int(v), paths, cache) for b, v in zip(base_bundles, views)]
    added = {v: [member_logits(b, v, paths, cache) for b in added_bundles] for v in args.views}
    table = grid_rows(y, groups, base_logits, list(base.weights) or [1.0] * len(base.members), added, args.shares,
                      n_boot=args.n_boot)
    table.insert(0, "added", "+".join(args.add))
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
