"""Helpers shared by the analyses: atomic table and figure writers, expert loading, batched prediction.

Tables are pandas DataFrames written as CSV and Markdown (title, notes, table), each file through a
temporary file in the same directory and ``os.replace``, so a reader never sees half a table.
Figures are matplotlib PNGs (Agg backend), written the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ase import Atoms

from pipeline.atomic import write_atomic
from pipeline.data.neighbors import collate
from pipeline.md.potential import MixturePotential
from pipeline.models import AllegroModel, load_checkpoint
from pipeline.names import EXPERTS, REPORT_PAIRS

#: The pairs in the row order of the report tables (the baseline first).
PAIRS = REPORT_PAIRS


def write_table(
    table: pd.DataFrame,
    *,
    csv: str | Path,
    md: str | Path,
    title: str,
    notes: Sequence[str] = (),
    floatfmt: str = ".3f",
) -> None:
    """Write ``table`` as CSV (all digits) and Markdown (``# title``, the notes, the table)."""
    write_atomic(csv, lambda p: table.to_csv(p, index=False))
    text = [f"# {title}", "", *[line for note in notes for line in (note, "")],
            table.to_markdown(index=False, floatfmt=floatfmt), ""]
    write_atomic(md, lambda p: p.write_text("\n".join(text)))


def save_figure(fig, path: str | Path, *, dpi: int = 120) -> None:
    """Save ``fig`` as PNG at ``path`` atomically and close it."""
    import matplotlib.pyplot as plt

    write_atomic(path, lambda p: fig.savefig(p, dpi=dpi, format="png"))
    plt.close(fig)


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_pairs(
    pairs: Mapping[str, Mapping[str, str | Path]],
    *,
    species: Sequence[str],
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, dict[str, AllegroModel]]:
    """Load every expert of every pair: ``{pair: {"hf": model, "lf": model}}`` (names among ``hf``/``lf``).

    A checkpoint named by several pairs (the shared HF expert of anchored training) is loaded once: the
    pairs then hold the same model object.
    """
    out: dict[str, dict[str, AllegroModel]] = {}
    loaded: dict[Path, AllegroModel] = {}
    for pair, paths in pairs.items():
        unknown = sorted(set(paths) - set(EXPERTS))
        if unknown:
            raise ValueError(f"pair {pair!r}: experts must be named among {list(EXPERTS)}, got {sorted(paths)}")
        out[pair] = {}
        for name, path in paths.items():
            key = Path(path).resolve()
            if key not in loaded:
                loaded[key] = load_checkpoint(path, species=tuple(species), dtype=dtype, map_location=device).eval()
            out[pair][name] = loaded[key]
    return out


def single(model: AllegroModel, name: str) -> MixturePotential:
    """A one-expert 'mixture' (expert index 0 on every atom) of ``model``."""
    return MixturePotential([model], names=(name,))


def pair_mixture(experts: Mapping[str, AllegroModel]) -> MixturePotential:
    """The HF/LF mixture of one pair (expert 0 = HF, 1 = LF)."""
    return MixturePotential([experts["hf"], experts["lf"]], names=EXPERTS)


def model_potentials(
    experts: Mapping[str, Mapping[str, AllegroModel]], reference_pair: str
) -> dict[str, tuple[MixturePotential, bool]]:
    """``{model name: (potential, is_mixture)}``: ``hf`` (reference pair), ``hf_<other>`` (only when that
    pair has an HF expert of its own, i.e. not the shared one of anchored training), ``lf_<pair>``,
    ``moe_<pair>`` (pairs in the given order)."""
    if reference_pair not in experts:
        raise ValueError(f"reference pair {reference_pair!r} is not among the pairs {sorted(experts)}")
    models: dict[str, tuple[MixturePotential, bool]] = {"hf": (single(experts[reference_pair]["hf"], "hf"), False)}
    for pair, pe in experts.items():
        if pair != reference_pair and pe["hf"] is not experts[reference_pair]["hf"]:
            models[f"hf_{pair}"] = (single(pe["hf"], "hf"), False)
    for pair, pe in experts.items():
        models[f"lf_{pair}"] = (single(pe["lf"], "lf"), False)
    for pair, pe in experts.items():
        models[f"moe_{pair}"] = (pair_mixture(pe), True)
    return models


def predict(
    potential: MixturePotential,
    frames: Sequence[Atoms],
    experts: Sequence[np.ndarray] | None = None,
    *,
    batch_size: int = 16,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies and forces of ``potential`` on ``frames`` (batched; each frame keeps its own cell).

    Parameters
    ----------
    potential : MixturePotential
        The model; its device and dtype are used.
    frames : sequence of ase.Atoms
    experts : sequence of (n_atoms_k,) int arrays, optional
        Expert of every atom of each frame (default: expert 0 everywhere).
    batch_size : int
        Frames per model call.

    Returns
    -------
    energies : (n_frames,) float64 array, eV
    forces : list of (n_atoms_k, 3) float64 arrays, eV/A
    """
    device = next(potential.parameters()).device
    if experts is None:
        experts = [np.zeros(len(f), dtype=np.int64) for f in frames]
    energies: list[float] = []
    forces: list[np.ndarray] = []
    for start in range(0, len(frames), batch_size):
        chunk = list(frames[start:start + batch_size])
        batch = collate(chunk, species=potential.species, r_max=potential.r_max, dtype=potential.dtype,
                        with_targets=False)
        batch = {key: value.to(device) for key, value in batch.items()}
        expert = torch.as_tensor(np.concatenate(experts[start:start + batch_size]), device=device)
        out = potential(batch, expert=expert, compute_forces=True)
        energies.extend(out["energy"].detach().double().cpu().numpy().tolist())
        f = out["forces"].detach().double().cpu().numpy()
        offsets = np.cumsum([0, *[len(a) for a in chunk]])
        forces.extend(f[offsets[i]:offsets[i + 1]] for i in range(len(chunk)))
    return np.asarray(energies), forces


def device_label(device: torch.device) -> str:
    """``cpu (<processor>)`` or ``cuda (<GPU name>)``."""
    import platform

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"
