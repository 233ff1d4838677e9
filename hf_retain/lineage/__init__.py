"""Which optimizer trained a model: read it (model cards, checkpoint JSON/YAML, the base-model chain, and
`registry.yaml` of well-known families with sources) and write it (our runs' lineage, into the output model card).

>>> from hf_retain.lineage import parse_model_card
>>> parse_model_card("- optimizer: Adafactor").name
'adafactor'
"""

from hf_retain.lineage.card import LINEAGE_KEY, parse_model_card
from hf_retain.lineage.finetune import FinetuneOptimizer, finetune_optimizer, optimizer_hyperparameters
from hf_retain.lineage.info import OptimizerInfo, canonical_optimizer_name, same_family
from hf_retain.lineage.reader import LineageLookup, lookup_pretraining_optimizer, read_pretraining_optimizer
from hf_retain.lineage.registry import load_registry
from hf_retain.lineage.writer import write_lineage

__all__ = [
    "LINEAGE_KEY",
    "FinetuneOptimizer",
    "LineageLookup",
    "OptimizerInfo",
    "canonical_optimizer_name",
    "finetune_optimizer",
    "load_registry",
    "lookup_pretraining_optimizer",
    "optimizer_hyperparameters",
    "parse_model_card",
    "read_pretraining_optimizer",
    "same_family",
    "write_lineage",
]
