"""The ``alitool`` command line: thin click commands over library functions.

Heavy imports (torch, onnxruntime, cv2) happen inside the commands so that ``alitool --help`` is instant.
A ``UserError`` anywhere becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import click


def runtime_report(cuda: bool = False) -> str:
    """Which inference runtimes are usable here (``alitool.install``); ``cuda`` imports torch to ask about CUDA."""
    from alitool.install import runtime_report as report

    return report(cuda=cuda)


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(runtime_report())
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
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
