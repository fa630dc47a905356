"""The ``moe-mlip`` subcommands, one module per stage or small group of related stages.

Each subcommand is a :class:`~pipeline.commands._common.Command` (ASE's ``CLICommand`` pattern):
``name``, ``short_description``, ``description``, ``add_arguments(parser)`` and ``run(args)``, with the
heavy imports inside ``run``. :data:`pipeline.cli.COMMANDS` is the ordered registry; a new stage adds
a class here and one entry there.
"""

from pipeline.commands._common import Command

__all__ = ["Command"]
