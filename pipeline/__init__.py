"""Multi-fidelity mixture-of-experts Allegro interatomic potentials (Pt(111)+CO).

Subpackages, one concern each (dependencies point one way: data <- models <- train; md, analysis
use the models' public interface):

- :mod:`pipeline.data`: structures, sampling, DFT labelling, readers, validation, regions, splits.
- :mod:`pipeline.models`: the Allegro expert, MoE layers, scale/shift.
- :mod:`pipeline.train`: losses and the co-training loop.
- :mod:`pipeline.md`: partition, mixture potential, LAMMPS driver.
- :mod:`pipeline.analysis`: result tables, plots, report.
"""

__version__ = "0.1.0"
