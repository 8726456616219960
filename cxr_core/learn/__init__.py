"""Learning: the tf.data pipeline and its TFRecord cache, model builders, losses, the training configuration and engine that writes a bundle (cxr_core.bundle).

Uses data and the bundle format; evaluation, serving and the reader study sit above it.
"""

from cxr_core._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    'pipeline': ('AugmentConfig', 'dataset_from_files', 'dataset_from_cache', 'augment_batch', 'decode_path', 'fit_to_size', 'finish_pipeline'),
    'cache': ('prepare_cache', 'write_cache', 'open_cache', 'Cache', 'CacheError'),
    'layer_walk': ('iter_layers',),
    'models': ('build_model', 'BACKBONES', 'BackboneSpec', 'set_bn_momentum', 'freeze_batchnorm'),
    'efficientnet_lite': ('build_efficientnet_lite', 'read_torch_legacy', 'load_efficientnet_lite_weights', 'efficientnet_lite_weights_file'),
    'losses': ('make_loss', 'positive_weights', 'WeightedBinaryCrossentropy', 'BinaryFocalLoss', 'LOSS_NAMES'),
    'config': ('TrainConfig', 'parse_override'),
    'training_data': ('TrainingData', 'load_training_data'),
    'engine': ('train', 'make_datasets', 'compile_model', 'choose_strategy', 'use_mixed_precision'),
    'callbacks': ('WarmupCosine', 'ValidationAUROC', 'EpochStats', 'ResumableCheckpoint', 'MONITOR'),
    'selection': ('mean_auroc',),
    'top_finetune': ('split_model', 'finetune_top'),
    'pretrain': ('PretrainConfig', 'pretrain_simclr', 'load_trunk', 'save_trunk'),
    'pretrained_modes': ('train_linear_head', 'train_top_finetune'),
})
