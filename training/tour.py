"""Build the guided tour of a model bundle on the demo set and store it in the bundle (tour.json).

    python -m training.tour --bundle models/default --data data/demo [--expert-labels FILE] [--seed 0]

Runs the model over every demo film outside its training and validation
splits (and over the photographs that ship with scikit-learn, as the non-chest
image), chooses about a dozen stops, one film per patient, that show where it
helps and where it fails, and writes them with captions computed from the
outputs to <bundle>/tour.json; the app's Guided tour page and its PDF handout
read that file. Run it again whenever the bundle is re-evaluated (the page says
when the stored tour was built for an earlier fitting). The radiologists'
labels (Majkowska et al.) are looked for under --data unless --expert-labels
names the file; without them the two disagreement stops are marked absent.
See cxr_core/jobs/tour.py.
"""

from __future__ import annotations

import argparse
import sys

from training._command import add_bundle, command_parser, progress_bar, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("tour", __doc__)
    add_bundle(parser)
    parser.add_argument("--data", default="data/demo", help="the demo set, any NIH layout (default data/demo)")
    parser.add_argument("--expert-labels", default=None,
                        help="the radiologists' label file (google2019_nih-chest-xray-labels.csv.gz); default: looked "
                             "for under --data")
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice among each category's best films (default 0)")
    parser.add_argument("--out", default=None, help="folder to write tour.json to (default: the bundle)")
    parser.add_argument("--no-photographs", action="store_true",
                        help="do not offer scikit-learn's sample photographs as the non-chest image")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _build_tour)


def _build_tour(args: argparse.Namespace) -> None:
    from cxr_core.jobs.tour import build_tour

    build_tour(args.bundle, args.data, expert_labels=args.expert_labels, seed=args.seed,
               photographs=not args.no_photographs, out=args.out, progress=progress_bar("film"))


if __name__ == "__main__":
    sys.exit(main())
