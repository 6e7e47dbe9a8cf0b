"""The ``alitool`` command line: thin click commands over library functions.

Heavy imports (torch, onnxruntime, cv2) happen inside the commands so that ``alitool --help`` is instant.
A ``UserError`` anywhere becomes one line on stderr and exit code 2, never a traceback; so does an option or
argument click refuses (its usual three-line usage block is folded into one line that names the command and
points to its --help).

Exit status: 0 done; 1 some inputs were skipped and --strict was given; 2 a user error (one ``error:`` line);
130 interrupted (finished outputs and the last checkpoint are kept).
"""

from __future__ import annotations

import sys

import click

# click >= 8.2 raises this for a group called without a command, its message being the whole help text.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class OneLineErrors(click.Group):
    """The ``alitool`` group, whose usage errors (a bad option value, a missing argument, an unknown command) end
    in one ``error:`` line and exit status 2, as every other user error does."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as err:  # ``alitool`` or ``alitool eval`` alone: the help, as click shows it
            click.echo(err.ctx.get_help())
            sys.exit(0)
        except click.UsageError as err:
            command = err.ctx.command_path if err.ctx is not None else "alitool"
            command = "alitool" + command[command.index(" "):] if " " in command else "alitool"
            message = " ".join(err.format_message().split())
            click.secho(f"error: {command}: {message} (see {command} --help)", fg="red", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            click.secho(f"error: {' '.join(err.format_message().split())}", fg="red", err=True)
            sys.exit(err.exit_code)
        except click.Abort:  # Ctrl-C outside a command's own handler (while click reads the command line)
            click.secho("interrupted", fg="yellow", err=True)
            sys.exit(130)
        sys.exit(0)


def runtime_report(cuda: bool = False) -> str:
    """Which inference runtimes are usable here (``alitool.install``); ``cuda`` imports torch to ask about CUDA."""
    from alitool.install import runtime_report as report

    return report(cuda=cuda)


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(runtime_report())
        ctx.exit()


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and which runtimes (ONNX Runtime providers, TensorRT, torch) are installed; "
                   "alitool doctor also checks CUDA.")
def main() -> None:
    """alitool: Adversarially Learned Inference (Dumoulin et al., ICLR 2017), from training to TensorRT.

    \b
    Quickstart:
      alitool train digits            # a few CPU minutes; writes runs/digits/
      alitool doctor                  # which runtimes and accelerators are usable
    """


@main.command()
def doctor() -> None:
    """Say which ONNX Runtime providers, TensorRT and CUDA are usable here.

    \b
    Example:
      alitool doctor
    """
    click.echo(runtime_report(cuda=True))


# Each area's commands live in alitool/commands/<area>.py; register them here, one line each.
from alitool.commands.eval import eval_group  # noqa: E402
from alitool.commands.experiment import experiment  # noqa: E402
from alitool.commands.export import export  # noqa: E402
from alitool.commands.run import encode, interpolate, reconstruct, sample  # noqa: E402
from alitool.commands.train import train  # noqa: E402

main.add_command(train)
main.add_command(experiment)
main.add_command(eval_group)
main.add_command(export)
main.add_command(encode)
main.add_command(reconstruct)
main.add_command(interpolate)
main.add_command(sample)


if __name__ == "__main__":
    main()
