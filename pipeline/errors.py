"""The base class of errors caused by the user's input (files, configuration, checkpoints, runs).

Every stage raises a subclass of :class:`PipelineInputError` when its input is wrong (a DFT file
that cannot be read, too many rejected frames, an incompatible checkpoint, a run that blew up). The
command-line interface prints such errors as one clear line and exits with status 1 (2 for a
configuration error) instead of a traceback; library users can catch the base class.
"""


class PipelineInputError(Exception):
    """An error the user can fix: the message names the file, frame or key and what is wrong."""
