"""Training of the HF and LF Allegro experts: alone, against a frozen anchor, or co-trained together.

Public API (modules: :mod:`~pipeline.train.data`, :mod:`~pipeline.train.cells`,
:mod:`~pipeline.train.anchor`, :mod:`~pipeline.train.losses`, :mod:`~pipeline.train.pair`,
:mod:`~pipeline.train.selection`, :mod:`~pipeline.train.metrics`, :mod:`~pipeline.train.core` (the one
training loop: optimiser, EMA, selection, schedule, early stopping, state, resume),
:mod:`~pipeline.train.loop` (the stages on the core), :mod:`~pipeline.train.single` (single models on the
core), :mod:`~pipeline.train.state`, :mod:`~pipeline.train.ddp`, :mod:`~pipeline.train.run`):

- :func:`run_training` (config + dataset -> checkpoints, metrics; one stage; resumable; DDP under torchrun);
- :func:`train_experts` (built experts + prepared data -> :class:`TrainResult`), :func:`evaluate`;
- :func:`data_terms`, :func:`agreement_terms`, :func:`mixture_terms`, :class:`LossWeights`;
- :func:`bulk_cells`, :func:`slab_cells` (mixture cells), :func:`attach_anchor`, :class:`Selection`;
- errors: :class:`TrainingDataError`, :class:`TrainingStateError`, :class:`NonFiniteLossError`.
"""

from pipeline.train.anchor import attach_anchor
from pipeline.train.cells import MixtureCellError, bulk_cells, slab_cells
from pipeline.train.data import TrainingDataError, prepare_samples, read_splits
from pipeline.train.ddp import DistInfo, init_distributed, resolve_device
from pipeline.train.loop import NonFiniteLossError, TrainData, TrainResult, evaluate, train_experts
from pipeline.train.losses import LossWeights, agreement_terms, data_terms, mixture_terms
from pipeline.train.run import PAIRS, STAGES, run_training, stage_train_config
from pipeline.train.selection import Selection
from pipeline.train.state import TrainingStateError

__all__ = [
    "PAIRS",
    "STAGES",
    "DistInfo",
    "LossWeights",
    "MixtureCellError",
    "NonFiniteLossError",
    "Selection",
    "TrainData",
    "TrainResult",
    "TrainingDataError",
    "TrainingStateError",
    "agreement_terms",
    "attach_anchor",
    "bulk_cells",
    "data_terms",
    "evaluate",
    "init_distributed",
    "mixture_terms",
    "prepare_samples",
    "read_splits",
    "resolve_device",
    "run_training",
    "slab_cells",
    "stage_train_config",
    "train_experts",
]
