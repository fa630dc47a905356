"""Model selection and early stopping on a smoothed validation loss.

The validation split is small (about 30 frames), so the validation loss of one epoch is noisy, and the
minimum over a few hundred noisy epochs is a lucky epoch, not the best model. The criterion here is the
trailing mean of the validation loss over ``window`` epochs (fewer at the start): the selected weights
are those of the epoch where that mean is lowest, and training stops once ``patience`` epochs have
passed without a lower mean.

>>> sel = Selection(window=2, patience=2)
>>> [sel.update(loss) for loss in (4.0, 2.0, 3.0, 1.0, 5.0, 6.0, 7.0)]
[True, True, True, True, False, False, False]
>>> sel.best_epoch, sel.best_value, sel.stop()
(4, 2.0, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Selection:
    """Smoothed validation-loss history of one training run (epochs counted from 1).

    Attributes
    ----------
    window : int
        Epochs in the trailing mean (1 = the raw validation loss).
    patience : int
        Epochs without a lower trailing mean after which :meth:`stop` is true.
    history : list of float
        Validation loss of every epoch so far.
    best_epoch : int
        Epoch of the lowest trailing mean (0 before the first epoch).
    best_value : float
        That trailing mean.
    """

    window: int = 1
    patience: int = 100
    history: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = math.inf

    def __post_init__(self) -> None:
        if self.window < 1 or self.patience < 1:
            raise ValueError(f"window and patience must be >= 1, got {self.window} and {self.patience}")

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def smoothed(self) -> float:
        """Trailing mean of the last ``window`` validation losses (NaN before the first epoch)."""
        recent = self.history[-self.window :]
        return sum(recent) / len(recent) if recent else math.nan

    def update(self, val_loss: float) -> bool:
        """Record the next epoch's validation loss; True when its trailing mean is the lowest so far."""
        self.history.append(float(val_loss))
        if self.smoothed < self.best_value:
            self.best_epoch, self.best_value = self.epoch, self.smoothed
            return True
        return False

    def stop(self) -> bool:
        """Whether ``patience`` epochs have passed since the best trailing mean."""
        return self.epoch - self.best_epoch >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "patience": self.patience, "history": list(self.history),
                "best_epoch": self.best_epoch, "best_value": self.best_value}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Selection:
        return cls(window=int(state["window"]), patience=int(state["patience"]),
                   history=[float(x) for x in state["history"]], best_epoch=int(state["best_epoch"]),
                   best_value=float(state["best_value"]))
