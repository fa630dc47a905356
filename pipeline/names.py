"""Names shared by the Snakemake rules and the package: experts, training pairs, MD and accuracy runs.

This module imports nothing beyond the standard library (the rules import it without torch).

>>> moe_run("cotrained") in MD_RUNS, EXPERTS
(True, ('hf', 'lf'))
"""

from __future__ import annotations

#: The two experts of a mixture: high fidelity (expensive, near the adsorbate) and low fidelity.
EXPERTS = ("hf", "lf")
#: Training pairs, in the order the rules build them: LF co-trained against the HF anchor, or alone.
TRAIN_PAIRS = ("cotrained", "independent")
#: The same pairs in the row order of the report tables (the baseline first).
REPORT_PAIRS = ("independent", "cotrained")


def moe_run(pair: str) -> str:
    """Name of the mixture run (MD, accuracy rows) built from training pair ``pair``."""
    if pair not in TRAIN_PAIRS:
        raise ValueError(f"unknown training pair {pair!r}; valid: {list(TRAIN_PAIRS)}")
    return f"moe_{pair}"


#: MD runs of the default workflow: full HF, full LF and the two mixtures.
MD_RUNS = ("hf", "lf", moe_run("independent"), moe_run("cotrained"))
