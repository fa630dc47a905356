"""``moe-mlip config``: the full configuration with every default filled in, as YAML."""

from __future__ import annotations

import argparse

from pipeline.commands._common import Command, add_config_args, config_from_args


class Config(Command):
    name = "config"
    short_description = "print the full configuration with every default filled in, as YAML"
    description = (
        "Validates the configuration of --config (or --config-json), fills in every default of the schema and "
        "prints the result as YAML: what every stage would run with. Data files are not checked."
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_config_args(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> None:
        import yaml

        print(yaml.safe_dump(config_from_args(args, check_files=False).to_dict(), sort_keys=False), end="")
