"""The exceptions the CLI turns into a single line on stderr: :class:`InspectorError` and its subclasses.

Anything a user can cause (bad paths, bad files, bad patterns) raises
:class:`InspectorError`, or a subclass, with a message that reads well on its
own; anything else is a bug and keeps its traceback.  The subclasses here say
what went wrong where a caller must tell cases apart: a file that is not a
dump (:class:`DumpError`), a run refused before any graph ran, which leaves no
dump (:class:`SetupError`, :class:`ModelError`), a capture stopped by a signal
(:class:`CaptureInterrupted`, exit 130).  Stages define their own next to the
code that raises them (``DiskFull`` in ``inspector.files.disk_space``, for one).
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
