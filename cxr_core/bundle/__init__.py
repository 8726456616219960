"""The bundle format: what a trained model is on disk and what serving reads.

A bundle folder (``bundle.json``, ``model.keras``, its model card) or an ensemble of member bundles;
the layer-name contract every builder, explanation, precision policy and LiteRT export keys on
(:mod:`cxr_core.bundle.layer_names`), and the one reader of versioned JSON files
(:mod:`cxr_core.bundle.versioned_json`). Uses data only; learn writes bundles, serving reads them.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    'layer_names': ('model_input_size', 'model_num_outputs'),
    'format': ('Bundle', 'BundleError', 'load_weights_into', 'code_version', 'describe_model', 'input_sizes', 'explanation_method', 'portable_path', 'read_metadata'),
    'ensemble': ('EnsembleBundle', 'EnsembleMember', 'load_bundle', 'assemble_ensemble'),
})
