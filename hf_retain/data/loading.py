"""`load_text_dataset`: a `datasets.Dataset` from a hub id, a local file or folder, or a ``builtin:`` corpus.

Every place that reads data by name (recipes, replay, the Fisher estimate, suites, the benchmark) loads it here,
so a bad name, an empty file or a missing split gets the same clear error everywhere.

Example:
    >>> from hf_retain.data.loading import load_text_dataset
    >>> load_text_dataset("builtin:general", "eval", max_samples=3).num_rows
    3
"""

from __future__ import annotations

from pathlib import Path

from hf_retain.constants import BUILTIN_PREFIX
from hf_retain.data.corpora import builtin_corpora
from hf_retain.errors import DatasetError
from hf_retain.hub import hub_error, looks_like_path

__all__ = ["BUILTIN_DATASETS", "DATA_FILE_SUFFIXES", "load_text_dataset"]

BUILTIN_DATASETS = ("general", "domain")
_FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
DATA_FILE_SUFFIXES = tuple(sorted(_FILE_BUILDERS))


def _builtin(name: str, split: str):
    import datasets

    which = name[len(BUILTIN_PREFIX):]
    if which not in BUILTIN_DATASETS:
        raise DatasetError(f"Unknown builtin dataset {name!r}; builtin datasets are "
                           f"{[BUILTIN_PREFIX + d for d in BUILTIN_DATASETS]} (splits 'train' and 'eval').")
    texts = builtin_corpora()[which]
    if split not in texts:
        raise DatasetError(f"Builtin dataset {name} has splits {sorted(texts)}, not {split!r}.")
    return datasets.Dataset.from_dict({"text": texts[split]})


def _file(name: str, local: Path):
    import datasets

    builder = _FILE_BUILDERS.get(local.suffix.lower())
    if builder is None:
        raise DatasetError(f"Dataset file {name} has suffix {local.suffix!r}; hf_retain reads "
                           f"{list(DATA_FILE_SUFFIXES)} files. Convert it or use a folder.")
    if builder != "parquet" and not local.read_bytes()[:1 << 16].strip():
        raise DatasetError(f"Dataset file {name} is empty; point to a file with rows (one JSON object per line for "
                           ".jsonl, one text per line for .txt).")
    return datasets.load_dataset(builder, data_files=str(local), split="train")


def load_text_dataset(name: str, split: str = "train", config: str | None = None, *, max_samples: int | None = None):
    """The ``split`` of dataset ``name``; a local file is one split (``train``), a saved `DatasetDict` is indexed
    by ``split``. ``max_samples`` keeps the first rows. Raises `DatasetError` for empty or missing data."""
    import datasets

    if name.startswith(BUILTIN_PREFIX):
        dataset = _builtin(name, split)
    else:
        local = Path(name).expanduser()
        try:
            if local.is_file():
                dataset = _file(name, local)
            elif local.is_dir() and (local / "dataset_info.json").is_file():
                loaded = datasets.load_from_disk(str(local))
                dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
            elif local.is_dir():
                dataset = datasets.load_dataset(str(local), config, split=split)
            elif looks_like_path(name, _FILE_BUILDERS):
                raise DatasetError(f"Dataset path {name} does not exist. Check the path (relative paths are resolved "
                                   f"from {Path.cwd()}).")
            else:
                dataset = datasets.load_dataset(name, config, split=split)
        except DatasetError:
            raise
        except (FileNotFoundError, ConnectionError, OSError) as err:
            raise hub_error("dataset", name, err, DatasetError) from err
        except (ValueError, KeyError, datasets.exceptions.DatasetsError) as err:  # unknown split, unparsable file
            raise DatasetError(f"Could not load split {split!r} of dataset {name}: {type(err).__name__}: {err}") \
                from err
    if len(dataset) == 0:
        raise DatasetError(f"Dataset {name} (split {split!r}) is empty; point to data with rows.")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset
