"""Active learning (:mod:`pipeline.active`; workflow/rules/active.smk): ``al-explore``, ``al-score``,
``al-select``, ``al-report``, ``al-table``, ``al-ship``."""

from __future__ import annotations

import argparse
import sys

from pipeline.commands._common import Command, add_config_args, config_from_args


class AlExplore(Command):
    name = "al-explore"
    short_description = "active learning: short Langevin MD of the mixture and full HF in one small cell; snapshots"
    description = (
        "Runs one trajectory per potential of active.explore.runs (mixture: HF on the md.partition HF atoms, "
        "LF elsewhere; hf: HF everywhere) and per temperature of active.explore.temperatures_k in the cell "
        "--cell; snapshots every active.explore.snapshot_interval steps with their provenance; a trajectory "
        "that turns unphysical is stopped, its last good state kept and the reason recorded."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--cell", required=True, help="exploration cell (a name of pipeline.active.cells.CELLS)")
        parser.add_argument("--iteration", type=int, required=True, help="loop iteration (provenance, random streams)")
        parser.add_argument("--hf", required=True, help="input: HF checkpoint (.pt) of the first committee seed")
        parser.add_argument("--lf", default=None,
                            help="input: LF checkpoint (.pt) of the mixture (needed by the mixture run)")
        parser.add_argument("--frames", required=True, help="output: unlabelled snapshots, extxyz")
        parser.add_argument("--trajectories", required=True, help="output: one row per trajectory, CSV")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.active.stages import explore_stage

        explore_stage(config_from_args(args), args.cell, iteration=args.iteration, hf=args.hf, lf=args.lf,
                      frames=args.frames, trajectories=args.trajectories)


class AlScore(Command):
    name = "al-score"
    short_description = "active learning: score snapshots by the HF committee's max per-atom force spread"
    description = (
        "Evaluates every snapshot with every committee member; writes the frames with info al_score (eV/A), "
        "the score table and the per-element mean invariant descriptors of the first member (NPZ)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--frames", nargs="+", required=True, help="input: snapshot files of al-explore, extxyz")
        parser.add_argument("--committee", nargs="+", required=True,
                            help="input: HF checkpoints (.pt), one per seed (>= 2)")
        parser.add_argument("--scored", required=True, help="output: scored frames, extxyz")
        parser.add_argument("--scores", required=True, help="output: score table, CSV")
        parser.add_argument("--descriptors", required=True, help="output: frame descriptors, NPZ")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.active.stages import score_stage

        score_stage(config_from_args(args), args.frames, args.committee, scored=args.scored, scores=args.scores,
                    descriptors=args.descriptors)


class AlSelect(Command):
    name = "al-select"
    short_description = "active learning: pick diverse high-uncertainty frames; write labelling chunks"
    description = (
        "Candidates: the top active.select.top_fraction of the scores (and >= min_score_ev_a); then "
        "farthest-point sampling of at most max_frames in the standardised descriptor space, from the "
        "highest score (ties broken by active.seed). Writes DIRECTORY/chunk_NNN.extxyz (chunk_size frames "
        "each, at least one file) and DIRECTORY/selected.csv."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--scored", required=True, help="input: scored frames of al-score, extxyz")
        parser.add_argument("--scores", required=True, help="input: score table of al-score, CSV")
        parser.add_argument("--descriptors", required=True, help="input: descriptors of al-score, NPZ")
        parser.add_argument("--directory", required=True, help="output: directory of the labelling chunks")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.active.stages import select_stage

        select_stage(config_from_args(args), scored=args.scored, scores=args.scores, descriptors=args.descriptors,
                     directory=args.directory)


class AlReport(Command):
    name = "al-report"
    short_description = "active learning: one iteration's row (counts, scores, calibration, test MAE, labelling time)"
    description = (
        "Scores the test split of the iteration's dataset and the frames labelled in the iteration with the "
        "committee: calibration (Spearman, binned means, PNG) of the score against the committee mean's "
        "force error, HF test MAE, and the iteration's counts and labelling CPU time (row as JSON)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--iteration", type=int, required=True, help="loop iteration")
        parser.add_argument("--dataset", required=True,
                            help="input: the dataset the iteration trained on (ingest output)")
        parser.add_argument("--committee", nargs="+", required=True, help="input: the iteration's HF checkpoints (.pt)")
        parser.add_argument("--trajectories", nargs="+", required=True, help="input: trajectories CSVs of al-explore")
        parser.add_argument("--scores", required=True, help="input: score table of al-score, CSV")
        parser.add_argument("--selected", required=True, help="input: selected.csv of al-select")
        parser.add_argument("--labelled", required=True, help="input: the iteration's merged labelled frames, extxyz")
        parser.add_argument("--failures", required=True, help="input: the iteration's merged labelling failures, CSV")
        parser.add_argument("--row", required=True, help="output: the iteration's row, JSON")
        parser.add_argument("--calibration-csv", required=True, help="output: calibration table, CSV")
        parser.add_argument("--calibration-png", required=True, help="output: calibration plot, PNG")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.active.report import write_iteration_report

        write_iteration_report(config_from_args(args), row_json=args.row, calibration_csv=args.calibration_csv,
                               calibration_png=args.calibration_png, iteration=args.iteration, dataset=args.dataset,
                               committee=args.committee, trajectories=args.trajectories, scores=args.scores,
                               selected=args.selected, labelled=args.labelled, failures=args.failures)


class AlTable(Command):
    name = "al-table"
    short_description = "active learning: the per-iteration table (CSV + Markdown) from the rows of al-report"
    description = "Combines the per-iteration rows (JSON) into one table sorted by iteration."

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rows", nargs="+", required=True, help="input: rows of al-report, JSON")
        parser.add_argument("--csv", required=True, help="output: table, CSV")
        parser.add_argument("--md", required=True, help="output: table, Markdown")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        from pipeline.active.report import write_iteration_table

        print(write_iteration_table(args.rows, csv=args.csv, md=args.md).to_string(index=False))


class AlShip(Command):
    name = "al-ship"
    short_description = "active learning: write the grown labelled set (base + added frames) with a generated README"
    description = (
        "Writes DEST/NAME (the base frames, then the frames the loop added), DEST/failures_active.csv (if "
        "any), DEST/sanity.{csv,md} and DEST/README.md (settings, counts, CPU time, sanity table, the "
        "active-learning provenance and the per-iteration table). The only way the loop's frames reach "
        "resources/ (e.g. --dest resources/dft)."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)
        parser.add_argument("--base", nargs="+", required=True, help="input: the base labelled set(s), extxyz")
        parser.add_argument("--added", nargs="*", default=[],
                            help="input: merged labelled frames of each iteration, extxyz")
        parser.add_argument("--failures", nargs="*", default=[],
                            help="input: labelling failures of each iteration, CSV")
        parser.add_argument("--table-md", default=None, help="input: per-iteration table of al-table, Markdown")
        parser.add_argument("--dest", required=True, help="output directory")
        parser.add_argument("--name", default="pt_co_gpaw.extxyz", help="file name of the grown set in DEST")

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        import shlex

        from pipeline.active.ship import ship_grown_set

        cfg = config_from_args(args)
        argv = sys.argv[1:]
        kept = [a for i, a in enumerate(argv) if a != "--config-json" and (i == 0 or argv[i - 1] != "--config-json")]
        command = "python -m pipeline " + shlex.join(kept)
        frames = ship_grown_set(args.base, args.added, args.failures, args.dest, name=args.name, table_md=args.table_md,
                                command=command, label_cfg=cfg.label)
        print(f"wrote {len(frames)} frames to {args.dest}/{args.name}")
