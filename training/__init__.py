"""Command-line entry points for training (thin wrappers over cxr_core):

* ``python -m training.prepare`` - build the preprocessed image cache;
* ``python -m training.train``   - train a model and write its bundle;
* ``python -m training.tune``    - hyperparameter search with keras-tuner;
* ``python -m training.ensemble`` - assemble an ensemble bundle from trained bundles;
* ``python -m training.evaluate`` - metrics, calibration, thresholds and localisation of a bundle;
* ``python -m training.fit_ood``  - fit a bundle's not-a-chest-X-ray check;
* ``python -m training.predict``  - batch prediction to CSV, sharded or not;
* ``python -m training.experiment`` - train recipes and write their table to docs/evidence/experiments.md.

A user error (bad path, malformed file, wrong option value) ends a command with
one line on stderr and exit status 2 (``training._errors``), never a traceback.

Each module parses arguments, then calls the library; heavy imports
(TensorFlow) happen after parsing so that ``--help`` answers at once.
"""
