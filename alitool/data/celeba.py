"""CelebA (Liu et al. 2015), aligned faces with 40 binary attributes: the paper's CelebA experiments (section 4.2,
Appendix A table 5) and the conditional model (section 4.4, Eq. 7), which needs the attributes.

Files, in --data-dir (or its ``celeba/`` subfolder, torchvision's layout):
- ``img_align_celeba/000001.jpg`` ... (178x218 JPEGs), or the ``img_align_celeba.zip`` they come in (read in
  place, no unpacking needed);
- ``list_attr_celeba.txt``: the image count, the 40 attribute names, then ``000001.jpg  -1  1 ...`` per image;
- ``list_eval_partition.txt``: ``000001.jpg 0`` per image, 0 = train, 1 = valid, 2 = test.

Each image is centre-cropped to a square (``data.crop: center``) and resized to ``data.image_size`` (64 in the
paper) by the contract's preprocessing (``alitool.contract.preprocess``). Attributes come with the images as
uint8 0/1 (``ArrayDataset.attrs``, names in ``attr_names``). Splits: ``train``, ``val``, ``test`` (the official
partition) and ``all``.

The official files are on Google Drive, which has no stable direct-download URL: they are not downloaded
automatically; a missing file gets the one-line instruction with the official page.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alitool.config import Config
from alitool.data import ArrayDataset, register
from alitool.data.download import default_data_dir, missing_message
from alitool.data.imagefiles import ImageSource, load_images
from alitool.errors import UserError

SOURCE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Align&Cropped Images, Anno, Eval)"
IMAGE_DIR, IMAGE_ZIP = "img_align_celeba", "img_align_celeba.zip"
ATTR_FILE, PARTITION_FILE = "list_attr_celeba.txt", "list_eval_partition.txt"
PARTITIONS = {"train": 0, "val": 1, "valid": 1, "test": 2}
N_ATTRIBUTES = 40


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(image names, attribute names, uint8 [N, 40] in 0/1) from ``list_attr_celeba.txt`` (-1/1 in the file)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {err}") from None
    try:
        count = int(lines[0].split()[0])
        attr_names = lines[1].split()
    except (IndexError, ValueError):
        raise UserError(f"{path}: expected an image count and a line of attribute names first") from None
    if len(attr_names) != N_ATTRIBUTES:
        raise UserError(f"{path}: {len(attr_names)} attribute names on line 2; CelebA has {N_ATTRIBUTES}")
    rows = [line.split() for line in lines[2:] if line.strip()]
    if len(rows) != count:
        raise UserError(f"{path}: the header announces {count} images but {len(rows)} rows follow (truncated?)")
    names = []
    values = np.empty((count, N_ATTRIBUTES), dtype=np.int8)
    for i, row in enumerate(rows):
        if len(row) != N_ATTRIBUTES + 1:
            raise UserError(f"{path}: line {i + 3} has {len(row) - 1} values; expected {N_ATTRIBUTES}")
        names.append(row[0])
        try:
            values[i] = [int(v) for v in row[1:]]
        except ValueError:
            raise UserError(f"{path}: line {i + 3}: attribute values must be -1 or 1") from None
    if not np.isin(values, (-1, 1)).all():
        raise UserError(f"{path}: attribute values must be -1 or 1")
    return names, attr_names, (values > 0).astype(np.uint8)


def read_partition(path: Path) -> dict[str, int]:
    """``list_eval_partition.txt`` as {image name: 0 train / 1 valid / 2 test}."""
    try:
        rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {err}") from None
    out = {}
    for i, row in enumerate(rows):
        if len(row) != 2 or row[1] not in ("0", "1", "2"):
            raise UserError(f"{path}: line {i + 1} should be '<image> <0|1|2>', got {' '.join(row)!r}")
        out[row[0]] = int(row[1])
    return out


def _find_root(data_dir: Path) -> Path:
    """``data_dir`` or its ``celeba/`` subfolder, whichever holds the attribute file."""
    for root in (data_dir, data_dir / "celeba"):
        if (root / ATTR_FILE).is_file():
            return root
    return data_dir


@register("celeba")
def load_celeba(cfg: Config, split: str, data_dir: str) -> ArrayDataset:
    if split not in PARTITIONS and split != "all":
        raise UserError(f"celeba has splits train, val, test, all; not {split!r}")
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir("celeba")
    root = _find_root(folder)
    images_at = root / IMAGE_DIR if (root / IMAGE_DIR).is_dir() else root / IMAGE_ZIP
    missing = [name for name, ok in ((f"{IMAGE_DIR}/ (or {IMAGE_ZIP})", images_at.exists()),
                                     (ATTR_FILE, (root / ATTR_FILE).is_file()),
                                     (PARTITION_FILE, (root / PARTITION_FILE).is_file())) if not ok]
    if missing:
        raise UserError(missing_message("celeba", missing, folder, [folder, folder / "celeba"], SOURCE,
                                        "CelebA is not downloaded automatically (Google Drive)"))
    names, attr_names, attrs = read_attributes(root / ATTR_FILE)
    partition = read_partition(root / PARTITION_FILE)
    unknown = [n for n in names if n not in partition]
    if unknown:
        raise UserError(f"{root / PARTITION_FILE}: no partition for {len(unknown)} images, e.g. {unknown[0]}")
    if split == "all":
        rows = np.arange(len(names))
    else:
        rows = np.array([i for i, n in enumerate(names) if partition[n] == PARTITIONS[split]], dtype=np.int64)
    source = ImageSource(images_at)
    prefix = f"{IMAGE_DIR}/" if source.zip is not None else ""
    members = [prefix + names[i] for i in rows]
    absent = [m for m in members[:1] + members[-1:] if not source.exists(m)]  # cheap check before decoding
    if absent:
        raise UserError(f"{images_at}: {absent[0]} is listed in {ATTR_FILE} but not there")
    size, channels = cfg.data.image_size, cfg.data.channels
    images, kept = load_images(source, members, size, channels, tag=f"celeba-{split}", crop=cfg.data.crop)
    return ArrayDataset("celeba", split, images, None, attrs[rows][kept], tuple(attr_names))
