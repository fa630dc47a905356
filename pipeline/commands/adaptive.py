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
        parser.add_argument("--pair", default="cotrained", help="name of the pair, for the notes (default cotrained)")
        group = parser.add_argument_group("protocol (default: pipeline.analysis.adaptive.AdaptiveProtocol)")
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
        protocol = protocol_with(steps=args.steps, bias_k_ev_a2=args.bias_k, bias_offset_a=args.bias_offset,
                                 bias_direction=args.bias_direction, speed_n_atoms=args.speed_atoms,
                                 speed_repeats=args.speed_repeats, speed_warmup=args.speed_warmup,
                                 equilibration_steps=args.equilibration_steps)
        result = adaptive_table(cfg, hf=args.hf, lf=args.lf, protocol=protocol)
        write_adaptive(result, csv=args.csv, md=args.md, png=args.png, pair=args.pair,
                       checkpoints={"hf": args.hf, "lf": args.lf})
