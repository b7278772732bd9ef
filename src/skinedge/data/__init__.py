"""ISIC / HAM10000 data: layouts, validation, grouped splits, preprocessing."""

from skinedge.data.classes import VOCABULARIES, ClassVocabulary, get_vocabulary
from skinedge.data.dataset import LesionDataset
from skinedge.data.images import ImageError, load_rgb
from skinedge.data.layouts import LAYOUTS, detect_layout
from skinedge.data.manifest import (
    Manifest,
    ManifestMismatchError,
    ManifestRow,
    load_manifest,
    make_manifest,
)
from skinedge.data.reading import Dataset, read_dataset
from skinedge.data.records import DataProblem, DataValidationError, Record, write_problem_report
from skinedge.data.transforms import (
    AugmentConfig,
    PreprocessConfig,
    build_eval_transform,
    build_train_transform,
)

__all__ = [
    "LAYOUTS", "VOCABULARIES", "AugmentConfig", "ClassVocabulary", "DataProblem", "Dataset",
    "DataValidationError", "ImageError", "LesionDataset", "Manifest", "ManifestMismatchError",
    "ManifestRow", "PreprocessConfig", "Record", "build_eval_transform", "build_train_transform",
    "detect_layout", "get_vocabulary", "load_manifest", "load_rgb", "make_manifest",
    "read_dataset", "write_problem_report",
]
