"""Command-line entry points for training (thin wrappers over cxr_core):

* ``python -m training.prepare`` - build the preprocessed image cache;
* ``python -m training.train``   - train a model and write its bundle;
* ``python -m training.tune``    - hyperparameter search with keras-tuner;
* ``python -m training.ensemble`` - assemble an ensemble bundle from trained bundles.

Each module parses arguments, then calls the library; heavy imports
(TensorFlow) happen after parsing so that ``--help`` answers at once.
"""
