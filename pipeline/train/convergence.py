"""Has a training run converged? Measures of a learning curve (one value per epoch).

:func:`late_change` is the relative change of a curve over its last quarter: near 0 when the curve has
flattened, clearly negative when it was still falling at the end of the budget. Apply it to a smoothed curve
(a trailing mean of the validation loss) or to the best-so-far curve of a validation error
(``np.minimum.accumulate``), whose last-quarter change is how much the selected checkpoint could still gain
from the last quarter of the epochs.

>>> round(late_change(np.minimum.accumulate([4.0, 3.0, 2.0, 2.5, 2.0, 2.1, 2.2, 1.8])), 6)
-10.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def late_change(curve: Sequence[float] | np.ndarray) -> float:
    """Relative change (percent) of ``curve`` from the start of its last quarter (at least two points) to its
    end; NaN for fewer than 4 epochs or a zero start."""
    values = np.asarray(curve, dtype=float)
    n = len(values)
    if n < 4:
        return float("nan")
    start = values[n - max(2, n // 4)]
    return float(100.0 * (values[-1] / start - 1.0)) if start else float("nan")
