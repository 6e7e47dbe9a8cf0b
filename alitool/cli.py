"""The ``alitool`` command line: thin click commands over library functions.

Heavy imports (torch, onnxruntime, cv2) happen inside the commands so that ``alitool --help`` is instant.
A ``UserError`` anywhere becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import click

from alitool import __version__


def runtime_report() -> str:
    """Which inference runtimes are usable here: ONNX Runtime providers, TensorRT, CUDA."""
    lines = [f"alitool {__version__}"]
    try:
        import torch

        cuda = f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no CUDA"
        lines.append(f"torch {torch.__version__} ({cuda})")
    except ImportError:
        lines.append("torch: not installed")
    try:
        import onnxruntime as ort

        lines.append(f"onnxruntime {ort.__version__}: providers {', '.join(ort.get_available_providers())}")
    except ImportError:
        lines.append("onnxruntime: not installed (pip install 'alitool[cpu]' or 'alitool[gpu]')")
    try:
        import tensorrt as trt

        lines.append(f"tensorrt {trt.__version__}")
    except ImportError:
        lines.append("tensorrt: not installed (pip install 'alitool[trt]' on a machine with an NVIDIA GPU)")
    return "\n".join(lines)


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(runtime_report())
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and which runtimes (ONNX Runtime providers, TensorRT, CUDA) are usable.")
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
    click.echo(runtime_report())



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
