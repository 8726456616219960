"""Experiments: the harness that trains recipes on one seeded split, scores them on validation and writes one table (harness).

The top layer: it trains (learn), scores (evaluation) and predicts (serving); nothing in cxr_core imports it.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "harness": ("Recipe", "KINDS", "COLUMNS", "read_recipe", "recipe_bundle", "build_recipe", "validate_bundle", "run_grid",
                "results_markdown", "put_between_markers", "write_table"),
})
