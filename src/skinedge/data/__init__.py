"""ISIC / HAM10000 data: layouts, validation, grouped splits, preprocessing.

Names are imported on first use (PEP 562), so ``import skinedge.data.images`` or the CLI's
``--help`` does not pull in torch through the dataset module.
"""

from skinedge.utils.lazy import lazy_exports

_EXPORTS = {
    "VOCABULARIES": "classes", "ClassVocabulary": "classes", "get_vocabulary": "classes",
    "LesionDataset": "dataset",
    "ImageError": "images", "load_rgb": "images", "strip_metadata": "images",
    "LAYOUTS": "layouts", "detect_layout": "layouts",
    "Manifest": "manifest", "ManifestMismatchError": "manifest", "ManifestRow": "manifest",
    "load_manifest": "manifest", "make_manifest": "manifest",
    "Dataset": "reading", "read_dataset": "reading",
    "split_folder": "splitting",
    "SyntheticSet": "synthetic", "augmented_train_set": "synthetic",
    "load_synthetic_set": "synthetic",
    "DataProblem": "records", "DataValidationError": "records", "Record": "records",
    "write_problem_report": "records",
    "AugmentConfig": "transforms", "PreprocessConfig": "transforms",
    "build_eval_transform": "transforms", "build_train_transform": "transforms",
    "preprocess_image": "transforms", "resize_for_eval": "transforms",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
