"""`alitool export`: a trained checkpoint -> ONNX (encoder, decoder) -> INT8 ONNX -> TensorRT engines."""

from __future__ import annotations

from pathlib import Path

import click

from alitool.commands import user_errors


@click.command()
@click.argument("run_or_checkpoint", required=False, default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: <run>/export).")
@click.option("--int8", is_flag=True, help="Also write encoder.int8.onnx: static INT8 (QDQ, per-channel), "
              "calibrated on real training images, with its fidelity against fp32 printed.")
@click.option("--int8-scheme", default=None, type=click.Choice(["portable", "vnni", "u8u8", "mobile"]),
              help="INT8 number formats (default portable). portable: int8, 7-bit weights, faithful on every CPU "
                   "and TensorRT; vnni: 8-bit weights, only for x86 with VNNI/AMX, ARM64 and TensorRT (wrong "
                   "features on AVX2-only x86); u8u8: uint8, ONNX Runtime only; mobile: portable with int32 "
                   "biases, for ONNX Runtime Mobile's Runtime optimisation style, not TensorRT.")
@click.option("--calib", default="", metavar="N|DIR",
              help="INT8 calibration: N random training images of the run's dataset (default 512), "
                   "or a folder of images / a .npy array.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (needs tensorrt and a CUDA GPU).")
@click.option("--fp16", is_flag=True, help="TensorRT engines in FP16 (the encoder is INT8 with --int8).")
@click.option("--batch", type=click.IntRange(1, 65536), default=64, show_default=True,
              help="TensorRT optimization profile: batches 1..B, tuned for B.")
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True,
              help="torch.onnx exporter; torchscript is the older one, several times faster on CPU.")
@click.option("--data-dir", default="", help="Where the run's dataset is, for INT8 calibration.")
@click.option("--force", is_flag=True, help="Export the ONNX files again even if they match the checkpoint.")
@click.option("--raw-weights", is_flag=True,
              help="For a run trained with train.ema: export the raw weights, not their moving average (the default).")
@user_errors
def export(run_or_checkpoint, out, int8, int8_scheme, calib, trt, fp16, batch, exporter, data_dir, force,
           raw_weights) -> None:
    """Export a trained model (default: the newest run under runs/) to ONNX, INT8 ONNX and TensorRT.

    Writes encoder.onnx (images -> z_mean, z_log_sigma, features) and decoder.onnx (z -> images) with a dynamic
    batch axis and the model's metadata inside, checks them against PyTorch on fresh inputs, and prints the
    largest difference.

    \b
    Examples:
      alitool export                          # newest run -> runs/<name>/export/*.onnx
      alitool export runs/digits --int8       # + encoder.int8.onnx and its fidelity vs fp32
      alitool export --int8 --calib photos/   # calibrate INT8 on your own images
      alitool export --int8 --int8-scheme vnni   # 8-bit weights: x86 with VNNI/AMX, ARM64, TensorRT only
      alitool export --trt --fp16 --batch 256 # + TensorRT engines (GPU machine)
      alitool export runs/digits --raw-weights --out runs/digits/export-raw   # a train.ema run's raw weights
    """
    from alitool.install import require_training_stack

    require_training_stack("alitool export")
    from alitool.export.pipeline import ExportOptions, export_checkpoint
    from alitool.runs import newest_run

    source = Path(run_or_checkpoint) if run_or_checkpoint else newest_run()
    if calib and not int8:
        click.echo("note: --calib only matters with --int8; adding --int8", err=True)
        int8 = True
    if int8_scheme and not int8:
        click.echo("note: --int8-scheme only matters with --int8; adding --int8", err=True)
        int8 = True
    options = ExportOptions(out=out, int8=int8, int8_scheme=int8_scheme or "", calib=calib, trt=trt, fp16=fp16,
                            batch=batch, exporter=exporter, data_dir=data_dir, force=force, raw_weights=raw_weights)
    report = export_checkpoint(source, options, log=click.echo)
    click.echo(f"done: {', '.join(str(f) for f in report.files)}")
