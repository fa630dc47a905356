"""The teacher labeller of the periodic-table set: SevenNet-0, a universal MLIP, NOT DFT.

SevenNet-0 (Park et al., J. Chem. Theory Comput. 2024; trained on Materials Project's MPtrj, PBE and PBE+U,
spin-polarised) comes from the ``sevenn`` package (MIT licence; install the ``teacher`` extra, pinned to 0.13.0),
whose wheel ships the weights: :data:`TEACHER_MODEL` is sevenn's name of the 11Jul2024 checkpoint, so labelling
needs no network. The calculator is built once per process, on the CPU, and returns energy (eV), forces (eV/A)
and stress (eV/A^3, ASE's sign and Voigt order). Frames labelled with ``label.calculator: sevenn``
(:mod:`pipeline.data.labelling`) carry :func:`teacher_metadata`: ``label_source`` names the teacher and
``label_level`` is ``teacher``, never DFT.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms

TEACHER_MODEL = "7net-0"
TEACHER_CHECKPOINT = "SevenNet_0__11Jul2024"
TEACHER_LICENCE = "MIT (sevenn; the SevenNet-0 weights ship in its wheel)"
TEACHER_PIN = "0.13.0"


def sevenn_version() -> str:
    """The installed sevenn's version; raises ``ImportError`` saying how to install the teacher extra."""
    try:
        import sevenn
    except ImportError as exc:
        raise ImportError("label.calculator sevenn needs the teacher extra: pip install -e '.[teacher]' "
                          f"(sevenn=={TEACHER_PIN})") from exc
    return str(sevenn.__version__)


def teacher_source() -> str:
    """``label_source`` of teacher frames, e.g. ``teacher:SevenNet-0 (sevenn 0.13.0, 11Jul2024 checkpoint)``."""
    return f"teacher:SevenNet-0 (sevenn {sevenn_version()}, {TEACHER_CHECKPOINT.rsplit('__', 1)[-1]} checkpoint)"


def teacher_metadata() -> dict:
    """The ``info`` keys of a teacher-labelled frame."""
    return {"label_calculator": "sevenn", "is_dft": False, "dft_code": "none (SevenNet-0 teacher, not DFT)",
            "label_source": teacher_source(), "label_level": "teacher"}


@functools.lru_cache(maxsize=1)
def teacher_calculator():
    """The SevenNet-0 ASE calculator on the CPU (built once: loading takes a few seconds).

    Raises
    ------
    RuntimeError
        When sevenn resolves :data:`TEACHER_MODEL` to a checkpoint other than :data:`TEACHER_CHECKPOINT`.
    """
    sevenn_version()
    from sevenn.calculator import SevenNetCalculator
    from sevenn.util import pretrained_name_to_path

    path = Path(pretrained_name_to_path(TEACHER_MODEL))
    if path.parent.name != TEACHER_CHECKPOINT:
        raise RuntimeError(f"sevenn maps {TEACHER_MODEL!r} to {path}, not the {TEACHER_CHECKPOINT} checkpoint "
                           f"(install sevenn=={TEACHER_PIN})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tensor-product accelerator": none is needed on the CPU
        return SevenNetCalculator(TEACHER_MODEL, device="cpu")


def teacher_labels(atoms: Atoms, *, stress: bool) -> dict:
    """Energy (eV), forces (eV/A, ``(n_atoms, 3)``) and, when ``stress``, stress (eV/A^3, Voigt 6) of ``atoms``."""
    work = atoms.copy()
    work.calc = teacher_calculator()
    energy = float(work.get_potential_energy())
    forces = np.array(work.get_forces())
    return {"energy": energy, "forces": forces, "stress": np.array(work.get_stress(voigt=True)) if stress else None,
            "extra": {}}
