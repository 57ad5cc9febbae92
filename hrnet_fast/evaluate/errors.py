"""The one exception of ``hrnet-fast eval``: every problem with the user's input raises it, so ``command.main`` can
print it as a message with exit status 2 instead of a traceback, wherever in the run it was found."""


class UserError(Exception):
    """A problem with the command's input (paths, sizes, names, checkpoint): printed as a message, no traceback."""
