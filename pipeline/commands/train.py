"""Training the experts and the co-training table: ``train``, ``cotraining-table`` (workflow/rules/train.smk)."""

from __future__ import annotations

import argparse

from pipeline.commands._common import Command, add_config_args, config_from_args


class Train(Command):
    name = "train"
    short_description = "train one stage of the experts (HF alone, LF against a frozen HF, or both together); resumable"
    description = (
        "Trains one stage on the dataset of the ingest stage (pipeline.train.run): 'hf' trains the HF "
        "expert alone (shared by both pairs in anchored mode); 'lf' trains the LF expert of --pair "
        "against the frozen HF checkpoint --anchor (cotrained: the agreement terms of the train: section; "
        "independent: every lambda 0); 'pair' trains both experts of --pair together (agreement_mode "
        "symmetric). Each stage selects its experts on its own smoothed validation loss, writes the "
        "selected EMA weights, the per-epoch metrics and a training state after every epoch in "
        "--state-dir, from which a rerun resumes (a corrupt or foreign state is an error, never a silent "
        "restart). Launch with torchrun (torchrun --standalone --nproc_per_node=N -m pipeline train ...) "
        "for data-parallel training."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--stage", required=True, choices=("hf", "lf", "pair"), help="which stage to train")
        parser.add_argument("--pair", choices=("cotrained", "independent"), help="the pair of an lf or pair stage")
        parser.add_argument("--seed", type=int,
                            help="override the configuration's seed (initial weights, batch order, cells)")
        parser.add_argument("--train-fraction", type=float, default=1.0,
                            help="train on whole groups holding this fraction of each family's training frames (nested "
                                 "subsets for one --subset-seed; validation and test unchanged; default: %(default)s)")
        parser.add_argument("--subset-seed", type=int, default=0,
                            help="seed of the group order of --train-fraction (default: %(default)s)")
        parser.add_argument("--dataset", required=True, help="input: dataset of the ingest stage, extxyz")
        parser.add_argument("--anchor", help="input (stage lf): the frozen HF expert checkpoint (.pt)")
        parser.add_argument("--hf", help="output (stages hf, pair): HF expert checkpoint (.pt)")
        parser.add_argument("--lf", help="output (stages lf, pair): LF expert checkpoint (.pt)")
        parser.add_argument("--metrics", required=True, help="output: per-epoch metrics, CSV")
        parser.add_argument("--state-dir", required=True,
                            help="directory of the training state (resumed from if present)")
        parser.add_argument("--keep-state", action="store_true", help="keep the training state after a successful run")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        import dataclasses

        from pipeline.train import run_training

        cfg = config_from_args(args)
        if args.seed is not None:
            cfg = dataclasses.replace(cfg, seed=args.seed)
        run_training(cfg, stage=args.stage, pair=args.pair, dataset=args.dataset, hf_path=args.hf, lf_path=args.lf,
                     anchor_path=args.anchor, metrics_path=args.metrics, state_dir=args.state_dir,
                     progress=not args.no_progress, keep_state=args.keep_state,
                     train_fraction=args.train_fraction, subset_seed=args.subset_seed)


class CotrainingTable(Command):
    name = "cotraining-table"
    short_description = "test-split accuracy of the HF/LF experts and their disagreement on bulk atoms, per pair"
    description = (
        "Evaluates each pair's HF and LF checkpoints on the test split: energy and force MAE of each "
        "expert (LF on its own bulk data and on all atoms) and the HF-LF per-atom energy and force RMS "
        "on bulk test atoms; writes CSV and Markdown."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--dataset", required=True, help="input: dataset of the ingest stage, extxyz")
        parser.add_argument("--pairs", nargs="+", required=True, help="pair names, one per checkpoint pair")
        parser.add_argument("--hf", nargs="+", required=True, help="input: HF checkpoints, in the order of --pairs")
        parser.add_argument("--lf", nargs="+", required=True, help="input: LF checkpoints, in the order of --pairs")
        parser.add_argument("--csv", required=True, help="output: table, CSV")
        parser.add_argument("--md", required=True, help="output: table, Markdown")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.analysis.cotraining import cotraining_table, write_cotraining_table

        table = cotraining_table(config_from_args(args), args.dataset, args.pairs, args.hf, args.lf)
        write_cotraining_table(table, csv=args.csv, md=args.md)
