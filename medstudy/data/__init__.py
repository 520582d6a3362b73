"""Data: the INFO table, loaders with md5 checks, synthetic lesions, label-fraction sampling and
in-memory tensor splits. See DESIGN §4 and ``data/README.md``."""

from medstudy.data.info import INFO, SPLITS, TASK_TYPES, DatasetInfo, get_info
from medstudy.data.loaders import DataFileError, Provenance, Split, check_file, load_split
from medstudy.data.sampling import sample_fraction, sample_fractions, validate_fraction
from medstudy.data.summary import plot_dataset_examples, summarize_dataset
from medstudy.data.tensors import TensorSplit, to_float, to_model_input

__all__ = [
    "INFO",
    "SPLITS",
    "TASK_TYPES",
    "DataFileError",
    "DatasetInfo",
    "Provenance",
    "Split",
    "TensorSplit",
    "check_file",
    "get_info",
    "load_split",
    "plot_dataset_examples",
    "summarize_dataset",
    "sample_fraction",
    "sample_fractions",
    "to_float",
    "to_model_input",
    "validate_fraction",
]
