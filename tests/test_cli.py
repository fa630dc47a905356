"""The command-line registry: every stage's subcommand, ``--help``, ``config``, error reporting and ``--traceback``."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import yaml

from pipeline import cli
from pipeline.commands import Command
from pipeline.config import config_from_dict
from pipeline.errors import PipelineInputError

# The subcommands before the CLI became a registry of pipeline.commands (Snakemake rules and users call them
# by these names); ``config`` was added with the registry.
STAGES = [
    "ingest", "sample", "label", "merge-labels", "dft-sanity", "ship-dft", "elastic-dft", "label-convergence",
    "train", "cotraining-table", "md-system", "md", "accuracy", "conservation", "eos", "elastic", "interface",
    "speed", "summary", "robustness-seed", "robustness", "learning-curves", "moe-emt-sample", "moe-emt-dataset",
    "moe-study-train", "moe-study-report", "sample-generalisation", "ship-generalisation", "data-learning-curve",
    "al-explore", "al-score", "al-select", "al-report", "al-table", "al-ship",
]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_the_registry_keeps_every_stage_name_in_order():
    names = [command.name for command in cli.COMMANDS]
    assert len(names) == len(set(names))
    assert names == [*STAGES, "config", "adaptive-table", "adaptive-seeds", "moe-periodic-sample",
                     "moe-periodic-dataset", "moe-periodic-ship", "moe-periodic-check-sample",
                     "moe-periodic-check-ship", "moe-periodic-check-table", "moe-hf-report"]
    assert list(_subparsers(cli.build_parser())) == names


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_every_command_has_a_parser_with_help(command, capsys):
    assert issubclass(command, Command)
    assert command.short_description.strip() and command.description.strip()
    parser = _subparsers(cli.build_parser())[command.name]
    assert parser.description == command.description
    with pytest.raises(SystemExit) as exc:
        cli.main([command.name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: moe-mlip {command.name}")
    assert parser.format_help() and all(a.help for a in parser._actions)


def test_main_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--traceback" in out
    for command in cli.COMMANDS:
        assert command.name in out


def test_help_does_not_import_torch():
    code = "import sys; from pipeline.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_config_from_args_stays_importable():
    from pipeline.cli import config_from_args

    args = cli.build_parser().parse_args(["config", "--config-json", '{"seed": 7}'])
    assert config_from_args(args).seed == 7


def _config_yaml(argv, capsys) -> dict:
    assert cli.main(["config", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("source", ["json", "file"])
def test_config_prints_the_defaults_as_yaml(source, tmp_path, capsys):
    if source == "json":
        argv = ["--config-json", "{}"]
    else:
        (tmp_path / "empty.yaml").write_text("{}\n")
        argv = ["--config", str(tmp_path / "empty.yaml")]
    printed = _config_yaml(argv, capsys)
    default = config_from_dict({}).to_dict()
    assert printed == default
    assert list(printed) == list(default)  # sort_keys=False: the order of the configuration
    assert config_from_dict(printed).to_dict() == default


def test_config_fills_defaults_around_the_given_keys(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 11\n")
    printed = _config_yaml(["--config", str(path)], capsys)
    assert printed["seed"] == 11
    assert config_from_dict(printed).to_dict() == config_from_dict({"seed": 11}).to_dict()


def test_config_error_is_one_line(tmp_path, capsys):
    assert cli.main(["config", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("moe-mlip config: configuration error:")


def _ingest_missing(tmp_path) -> list[str]:
    out = {name: str(tmp_path / name) for name in ("dataset", "manifest", "rejected", "stats-csv", "stats-md")}
    return ["ingest", "--config-json", "{}", "--inputs", str(tmp_path / "no_such_file.extxyz"),
            *[arg for name, path in out.items() for arg in (f"--{name}", path)]]


def test_an_input_error_is_one_line_and_fails(tmp_path, capsys):
    assert cli.main(_ingest_missing(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("moe-mlip ingest: ") and "no_such_file.extxyz" in err
    assert "Traceback" not in err


def test_traceback_flag_shows_the_traceback(tmp_path):
    with pytest.raises(PipelineInputError, match="no_such_file"):
        cli.main(["--traceback", *_ingest_missing(tmp_path)])
    proc = subprocess.run([sys.executable, "-m", "pipeline", "-T", *_ingest_missing(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and "no_such_file" in proc.stderr
