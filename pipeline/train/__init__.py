"""Co-training of the HF and LF Allegro experts with agreement constraints on bulk atoms.

Public API (modules: :mod:`~pipeline.train.data`, :mod:`~pipeline.train.losses`,
:mod:`~pipeline.train.pair`, :mod:`~pipeline.train.metrics`, :mod:`~pipeline.train.loop`,
:mod:`~pipeline.train.state`, :mod:`~pipeline.train.ddp`, :mod:`~pipeline.train.run`):

- :func:`run_training` (config + dataset -> checkpoints, metrics; resumable; DDP under torchrun);
- :func:`train_pair` (built experts + prepared data -> :class:`TrainResult`), :func:`evaluate`;
- :func:`data_terms`, :func:`agreement_terms`, :class:`LossWeights`;
- errors: :class:`TrainingDataError`, :class:`TrainingStateError`, :class:`NonFiniteLossError`.
"""

from pipeline.train.data import (
    TrainingDataError,
    make_extra_cells,
    prepare_samples,
    read_splits,
)
from pipeline.train.ddp import DistInfo, init_distributed, resolve_device
from pipeline.train.loop import (
    NonFiniteLossError,
    TrainData,
    TrainResult,
    evaluate,
    train_pair,
)
from pipeline.train.losses import LossWeights, agreement_terms, data_terms
from pipeline.train.run import PAIRS, pair_train_config, run_training
from pipeline.train.state import TrainingStateError

__all__ = [
    "PAIRS",
    "DistInfo",
    "LossWeights",
    "NonFiniteLossError",
    "TrainData",
    "TrainResult",
    "TrainingDataError",
    "TrainingStateError",
    "agreement_terms",
    "data_terms",
    "evaluate",
    "init_distributed",
    "make_extra_cells",
    "pair_train_config",
    "prepare_samples",
    "read_splits",
    "resolve_device",
    "run_training",
    "train_pair",
]
