"""The one exception type the CLI turns into a single line on stderr.

Anything a user can cause (bad paths, bad files, bad patterns) raises
:class:`InspectorError` with a message that reads well on its own; anything
else is a bug and keeps its traceback.
"""


class InspectorError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class DumpError(InspectorError):
    """A file is not a readable ggml-inspector dump."""


class SetupError(InspectorError):
    """A run could not start: its model, input or placement was refused before any graph ran.

    A capture that fails this way leaves no dump behind: there is nothing in it.
    """


class ModelError(SetupError):
    """A model file is missing, not GGUF, truncated or rejected by llama.cpp."""


class CaptureInterrupted(InspectorError):
    """A capture stopped early (Ctrl-C, SIGTERM); the dump is kept, marked incomplete."""
