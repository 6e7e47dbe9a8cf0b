"""The CLI's commands, one module per area; ``alitool.cli`` registers them on the ``alitool`` group."""

from __future__ import annotations

import functools
import sys

import click

from alitool.errors import UserError


def user_errors(fn):
    """Turn UserError (and Ctrl-C) into one clear line and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho("interrupted; finished outputs and the last checkpoint are kept", fg="yellow", err=True)
            sys.exit(130)

    return wrapper
