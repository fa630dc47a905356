"""Adaptive versus static HF/LF partition in MD with a moving CO: ``adaptive-table`` (workflow/rules/adaptive.smk)."""

from __future__ import annotations

import argparse

from pipeline.commands._common import Command, add_config_args, add_table_outputs, config_from_args


class AdaptiveTable(Command):
    name = "adaptive-table"
    short_description = (
        "adaptive vs static partition vs full HF: ASE NVE with a CO dragged by a lateral well; drift, momentum, "
        "HF centres, speed"
    )
    description = (
        "Runs ASE velocity Verlet NVE (float64, md.run.timestep_fs, Maxwell-Boltzmann start at "
        "md.run.temperature_k, no fixed atoms) of the md.system cell with the adaptive partition "
        "(md.partition.adaptive), the static partition (md.partition rule) and full HF, a static lateral "
        "harmonic well on the C atom of one CO in the Hamiltonian so that the CO crosses the surface; reports "
        "the energy drift (block-averaged standard error), momentum drift (bias impulse subtracted), CO "
        "displacement, HF centres per step and LF next to C, and the speedup over full HF of one step on a "
        "~2000-atom slab with the speed table's CO coverage; table and a figure of lambda over time."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--hf", required=True, help="input: HF expert checkpoint (.pt)")
        parser.add_argument("--lf", required=True, help="input: LF expert checkpoint (.pt)")
        parser.add_argument("--lf-independent", default=None,
                            help="input: the independently trained LF of the same seed (switching-shell columns)")
        parser.add_argument("--pair", default="cotrained", help="name of the pair, for the notes (default cotrained)")
        parser.add_argument("--seed", type=int, default=None,
                            help="training seed of the experts, also the seed of the velocities (default: config seed)")
        group = parser.add_argument_group("protocol (default: the configuration's analysis.adaptive)")
        group.add_argument("--steps", type=int, default=None, help="NVE steps of each run")
        group.add_argument("--bias-k", type=float, default=None, help="spring constant of the lateral well, eV/A^2")
        group.add_argument("--bias-offset", type=float, default=None,
                           help="distance of the well's centre from the C atom's start, A")
        group.add_argument("--bias-direction", type=float, nargs=2, default=None, metavar=("A", "B"),
                           help="direction of the offset in surface cell vectors (a, b)")
        group.add_argument("--speed-atoms", type=int, default=None,
                           help="atoms of the timing slab (about; 0: no timing)")
        group.add_argument("--speed-repeats", type=int, default=None, help="timed evaluations per case (median)")
        group.add_argument("--speed-warmup", type=int, default=None, help="warm-up evaluations per case")
        group.add_argument("--equilibration-steps", type=int, default=None,
                           help="Langevin NVT steps at md.run.temperature_k before each NVE run (0: none)")
        add_table_outputs(parser, png="lambda over time, HF centres and CO displacement")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.adaptive import adaptive_table, protocol_with, write_adaptive

        cfg = config_from_args(args)
        protocol = protocol_with(cfg.analysis.adaptive, steps=args.steps, bias_k_ev_a2=args.bias_k, bias_offset_a=args.bias_offset,
                                 bias_direction=args.bias_direction, speed_n_atoms=args.speed_atoms,
                                 speed_repeats=args.speed_repeats, speed_warmup=args.speed_warmup,
                                 equilibration_steps=args.equilibration_steps)
        result = adaptive_table(cfg, hf=args.hf, lf=args.lf, seed=args.seed, protocol=protocol,
                                lf_independent=args.lf_independent)
        checkpoints = {"hf": args.hf, "lf": args.lf}
        if args.lf_independent:
            checkpoints["lf independent"] = args.lf_independent
        write_adaptive(result, csv=args.csv, md=args.md, png=args.png, pair=args.pair, checkpoints=checkpoints)


class AdaptiveSeeds(Command):
    name = "adaptive-seeds"
    short_description = "the adaptive-partition tables of several training seeds: stacked, mean and std, verdicts"
    description = (
        "Stacks the per-seed tables of adaptive-table (CSV), adds a mean and a std row per run over the seeds "
        "and checks the issue's criteria (drift within 3 standard errors, fluctuation <= 1.5x full HF, momentum "
        "at round-off, CO displacement >= 3 A, speedup >= 2x, LF next to C) for every seed."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tables", nargs="+", required=True, help="input: per-seed tables (CSV of adaptive-table)")
        parser.add_argument("--figures", nargs="*", default=[], help="the per-seed figures, named in the notes")
        parser.add_argument("--csv", required=True, help="output: table (CSV)")
        parser.add_argument("--md", required=True, help="output: table with verdicts (Markdown)")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        import pandas as pd

        from pipeline.analysis.adaptive import seeds_table, write_seeds_table

        table = seeds_table([pd.read_csv(path) for path in args.tables])
        write_seeds_table(table, csv=args.csv, md=args.md, seed_tables=args.tables, figures=args.figures)
