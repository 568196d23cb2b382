"""The one exception type for bad user input (config, data file, checkpoint, CLI argument).

The CLI prints its message on one line and exits non-zero, without a traceback. Raise it with a
message that names the file, key or line at fault.
"""


class EmotuneError(Exception):
    """A problem with what the user gave us, not a bug in emotune."""
