"""Molecular dynamics: ``md-system``, ``md`` (workflow/rules/md.smk)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from pipeline.commands._common import Command, add_config_args, config_from_args
from pipeline.config import ConfigError


class MdSystem(Command):
    name = "md-system"
    short_description = "build the MD production cell (Pt(111) slab + CO) and its static HF/LF partition"
    description = (
        "Builds the Pt(111)+CO cell of md.system, assigns every atom to the HF or LF expert by the rule "
        "of md.partition, and writes the cell with its per-atom 'expert' array (extxyz) and a picture "
        "of the partition (PNG, side and top views; with md.partition.mode adaptive the atoms are coloured "
        "by their HF weight lambda at t = 0, the inner radius defaulting to models.lf.r_max)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--cell", required=True, help="output: cell with the partition, extxyz")
        parser.add_argument("--png", required=True, help="output: picture of the partition, PNG")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.md.stage import build_md_system

        build_md_system(config_from_args(args), cell=args.cell, png=args.png)


class Md(Command):
    name = "md"
    short_description = "LAMMPS MD of the production cell with one expert or the HF/LF mixture; resumable"
    description = (
        "Runs LAMMPS (fix external callback into the torch potential) on the cell of md-system: the "
        "mixture when both --hf and --lf are given (partition from the cell file, or with md.partition.mode "
        "adaptive the adaptive partition of md.partition.adaptive, one MPI rank only), else the one expert "
        "on every atom. Langevin NVT equilibration (md.run.equilibration_steps at md.run.temperature_k), "
        "then the production: ensemble, timestep, steps and intervals from md.run; blow-up limits from "
        "md.safety. Restart files go to --state-dir every md.run.restart_interval steps, and a rerun "
        "resumes from the last one; after a blow-up the last good state is in --state-dir. With "
        "md.run.mpi_ranks N > 1 the command starts itself again under 'mpirun -np N' (the mpich wheel's, "
        "or $PIPELINE_MPIRUN with {n} for N, e.g. 'srun -n {n}') and LAMMPS decomposes the cell over the N "
        "ranks (one GPU per rank where there are GPUs); a run already under an MPI launcher runs as it is."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--run", required=True,
                            help="label of the run, e.g. hf, lf, moe_independent, moe_cotrained")
        parser.add_argument("--hf", default=None, help="input: HF expert checkpoint (.pt)")
        parser.add_argument("--lf", default=None, help="input: LF expert checkpoint (.pt)")
        parser.add_argument("--cell", required=True, help="input: cell with the partition, extxyz (from md-system)")
        parser.add_argument("--thermo", required=True, help="output: thermo table, CSV")
        parser.add_argument("--final", required=True, help="output: final structure with velocities and forces, extxyz")
        parser.add_argument("--dump", required=True, help="output: LAMMPS dump (text, custom style)")
        parser.add_argument("--summary", required=True, help="output: run summary (sizes, timings, drift), JSON")
        parser.add_argument("--state-dir", required=True, help="directory of restart files (resumed from if present)")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.md.lammps_io import launched_by_mpi, mpi_rank_from_env

        checkpoints = {name: path for name, path in (("hf", args.hf), ("lf", args.lf)) if path is not None}
        if not checkpoints:
            raise ConfigError("md needs --hf, --lf or both")
        cfg = config_from_args(args)
        from pipeline.md.stage import check_md_ranks

        check_md_ranks(cfg, checkpoints)  # an adaptive run on several ranks: refused before mpirun starts
        ranks = int(cfg.md.run.mpi_ranks)
        if ranks > 1 and not launched_by_mpi():
            command = relaunch_command(ranks, _md_argv(args))
            logging.getLogger(__name__).info("md on %d MPI ranks: %s", ranks, " ".join(command))
            code = subprocess.run(command, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
            if code:
                raise SystemExit(code)
            return
        if launched_by_mpi() and mpi_rank_from_env() > 0:
            logging.getLogger("pipeline").setLevel(logging.WARNING)  # rank 0 logs the run
        from pipeline.md.stage import run_md

        run_md(cfg, run=args.run, checkpoints=checkpoints, cell=args.cell, thermo_csv=args.thermo,
               final=args.final, dump=args.dump, summary=args.summary, state_dir=args.state_dir)


def _md_argv(args: argparse.Namespace) -> list[str]:
    """The ``md`` command line of parsed ``args`` (to start it again under an MPI launcher)."""
    argv = ["md", *(("--config-json", args.config_json) if args.config_json else ("--config", args.config))]
    for option in ("run", "hf", "lf", "cell", "thermo", "final", "dump", "summary", "state_dir"):
        value = getattr(args, option)
        if value is not None:
            argv += [f"--{option.replace('_', '-')}", str(value)]
    return argv


def relaunch_command(ranks: int, argv: Sequence[str]) -> list[str]:
    """``mpirun -np RANKS python -m pipeline ARGV``: this command again on ``ranks`` MPI ranks.

    >>> relaunch_command(2, ["md", "--run", "hf"])[-5:]
    ['-m', 'pipeline', 'md', '--run', 'hf']
    """
    from pipeline.md.lammps_io import mpirun_command

    return [*mpirun_command(ranks), sys.executable, "-m", "pipeline", *argv]
