"""Active learning from the mixture's own MD (issue 16, part 2).

One iteration i of the loop (``workflow/rules/active.smk``, target ``active``; ``active:`` config section):

1. **data**: ingest the base set (``data.paths``) plus the frames labelled in iterations < i
   (``results/active/iter{i}/data/dataset.extxyz``, the ``ingest`` subcommand);
2. **train**: the HF committee (one HF per ``active.committee_seeds``) and the LF of ``active.pair`` for the
   first seed (the ``train`` subcommand, as in the main run);
3. **explore** (:mod:`.explore`, cells of :mod:`.cells`): short Langevin MD of the mixture and of full HF;
   snapshots every n steps; unphysical trajectories stopped and recorded;
4. **score** (:mod:`.uncertainty`): max per-atom force spread of the committee;
5. **select** (:mod:`.select`): top fraction by score, then farthest-point sampling in the HF's invariant
   descriptor space; written as labelling chunks (a Snakemake checkpoint);
6. **label**: the ``label`` subcommand per chunk (:mod:`pipeline.data.labelling`: cached per frame, resumable,
   failures recorded), then ``merge-labels``;
7. **report** (:mod:`.report`): calibration of the score, test errors, the per-iteration row.

:mod:`.provenance` lists the ``info`` keys every added frame carries; :mod:`.ship` writes the grown set with a
README (the only way it reaches ``resources/``). :mod:`.stages` holds the file-level stage functions the CLI
calls.
"""

from pipeline.active.cells import CELLS, build_cell
from pipeline.active.provenance import AL_KEYS, INGEST_KEYS

__all__ = ["AL_KEYS", "CELLS", "INGEST_KEYS", "build_cell"]
