"""User-facing errors: the CLI prints them as one line and exits non-zero, never with a traceback."""


class UserError(Exception):
    """Something the user can fix (a missing file, a bad option, a corrupt checkpoint)."""


class TrainingDiverged(UserError):
    """A loss or a parameter became NaN/inf; the last good checkpoint is kept."""
