"""Any folder of images, for training ALI on your own data (the paper's 64x64 pipeline, section 4.2, applied to
whatever the user has).

``alitool train folder --data-dir photos/ --set data.image_size=64``: every image under the folder,
recursively (png, jpg/jpeg, bmp, tif/tiff, webp, pgm/ppm/pbm/pnm), centre-cropped to a square (or the whole image
stretched, ``--set data.crop=stretch``) and resized to ``data.image_size``, as RGB (``data.channels: 3``) or
grayscale (``data.channels: 1``), by the same preprocessing as INT8 calibration and ``alitool encode``
(``alitool.contract.preprocess``). A file that cannot be decoded is reported on one warning line and skipped.
A zip archive of images can stand in for the folder.

Splits: ``train`` is every image. ``val``/``test`` are not defined (the trainer then takes its fixed
reconstruction batch from the training images).
"""

from __future__ import annotations

from pathlib import Path

from alitool.config import Config
from alitool.contract.preprocess import IMAGE_EXTENSIONS
from alitool.data import ArrayDataset, register
from alitool.data.imagefiles import ImageSource, load_images
from alitool.errors import UserError


@register("folder")
def load_folder(cfg: Config, split: str, data_dir: str) -> ArrayDataset:
    if split not in ("train", "all"):
        raise UserError(f"the folder dataset has only the split train (every image); not {split!r}")
    if not data_dir:
        raise UserError("the folder dataset needs --data-dir DIR (a folder of images, searched recursively)")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if cfg.data.image_size < 1:
        raise UserError("the folder dataset needs data.image_size > 0, e.g. --set data.image_size=64")
    source = ImageSource(root)
    names = source.list_images()
    if not names:
        raise UserError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found, searched recursively")
    images, _ = load_images(source, names, cfg.data.image_size, cfg.data.channels,
                            tag=f"folder-{root.resolve().name or 'root'}", crop=cfg.data.crop)
    if len(images) == 0:
        raise UserError(f"{root}: none of the {len(names)} image files could be decoded")
    return ArrayDataset("folder", split, images)
