"""The analysis stage: one module per result, each a function of typed inputs plus a CLI subcommand.

- :mod:`~pipeline.analysis.cotraining`: test accuracy of each expert and the bulk HF-LF disagreement;
- :mod:`~pipeline.analysis.accuracy`: energy / force errors of experts and mixtures by region and family, on the
  test split and the shipped generalisation set;
- :mod:`~pipeline.analysis.data_curve`: HF errors against the number of training frames (data learning curve);
- :mod:`~pipeline.analysis.conservation`: production drift (blocking standard error), fluctuation and mean temperature of
  the MD runs, energy traces;
- :mod:`~pipeline.analysis.eos`: fcc Pt equation of state (Birch-Murnaghan) of DFT, experts, mixtures;
- :mod:`~pipeline.analysis.interface`: spurious forces at the HF/LF interface of a split crystal;
- :mod:`~pipeline.analysis.speed`: MD-step speed of full HF, full LF and the mixture, with the ideal per-edge bound;
- :mod:`~pipeline.analysis.summary`: the one-page summary against the paper's claims.

Modules are imported explicitly (``from pipeline.analysis.eos import eos_table``), so that importing one
analysis does not load the others.
"""
