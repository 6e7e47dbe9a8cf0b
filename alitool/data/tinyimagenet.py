"""Tiny ImageNet (200 classes, 64x64): the paper's Tiny ImageNet experiment (section 4.2, Appendix A table 6).

The official ``tiny-imagenet-200.zip`` unpacks to ``tiny-imagenet-200/``:
- ``wnids.txt``: the 200 WordNet ids (class k = the k-th id of the sorted list, as torchvision's ImageFolder);
- ``train/<wnid>/images/<wnid>_<i>.JPEG``: 500 per class, 100,000 in all;
- ``val/images/val_<i>.JPEG`` with ``val/val_annotations.txt`` (tab-separated: file, wnid, bounding box): 10,000;
- ``test/images``: unlabelled, not used.

Either the folder or the zip itself is read (the zip in place, no unpacking). Where neither is there and a
network is reachable, the zip is downloaded from the official URL and checked against its MD5.
Splits: ``train`` and ``val`` (the paper's code monitors on ``valid``); ``test`` is an alias of ``val``, the
labelled held-out set. Images are resized to ``data.image_size`` when it is not 64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alitool.config import Config
from alitool.data import ArrayDataset, register
from alitool.data.download import Remote, default_data_dir, fetch_files
from alitool.data.imagefiles import ImageSource, load_images
from alitool.errors import UserError

ROOT = "tiny-imagenet-200"
REMOTE = Remote("tiny-imagenet-200.zip", "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                md5="90528d7ca1a48142e341f4ef8d21d0de")


def _locate(data_dir: Path) -> tuple[ImageSource, str]:
    """(image source, the prefix of ``tiny-imagenet-200/`` inside it)."""
    if (data_dir / "wnids.txt").is_file():  # --data-dir at tiny-imagenet-200/ itself
        return ImageSource(data_dir), ""
    if (data_dir / ROOT / "wnids.txt").is_file():
        return ImageSource(data_dir / ROOT), ""
    path = fetch_files("tinyimagenet", [REMOTE], data_dir, source=REMOTE.url)[REMOTE.filename]
    return ImageSource(path), f"{ROOT}/"


def _text(source: ImageSource, name: str) -> str:
    try:
        return source.read(name).decode("utf-8")
    except (OSError, KeyError) as err:
        raise UserError(f"{source}: cannot read {name} ({err}); an incomplete Tiny ImageNet copy?") from None
    except UnicodeDecodeError:
        raise UserError(f"{source}/{name}: not a text file") from None


@register("tinyimagenet")
def load_tinyimagenet(cfg: Config, split: str, data_dir: str) -> ArrayDataset:
    if split not in ("train", "val", "test"):
        raise UserError(f"tinyimagenet has splits train and val (test = val); not {split!r}")
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir("tinyimagenet")
    source, prefix = _locate(folder)
    wnids = sorted(set(_text(source, prefix + "wnids.txt").split()))
    if not wnids:
        raise UserError(f"{source}: wnids.txt lists no classes")
    class_of = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        names = source.list_images(prefix + "train/")
        labels = []
        for name in names:
            wnid = name[len(prefix + "train/"):].split("/")[0]
            if wnid not in class_of:
                raise UserError(f"{source}/{name}: class folder {wnid!r} is not in wnids.txt")
            labels.append(class_of[wnid])
    else:
        annotations = prefix + "val/val_annotations.txt"
        names, labels = [], []
        for i, line in enumerate(_text(source, annotations).splitlines()):
            fields = line.split("\t")
            if not line.strip():
                continue
            if len(fields) < 2 or fields[1] not in class_of:
                raise UserError(f"{source}/{annotations}: line {i + 1} should be '<file>\\t<wnid>\\t...' with a "
                                f"wnid from wnids.txt")
            names.append(f"{prefix}val/images/{fields[0]}")
            labels.append(class_of[fields[1]])
    if not names:
        raise UserError(f"{source}: no {split} images found under {prefix}{'train' if split == 'train' else 'val'}/")
    images, kept = load_images(source, names, cfg.data.image_size, cfg.data.channels, tag=f"tinyimagenet-{split}",
                               crop=cfg.data.crop)
    return ArrayDataset("tinyimagenet", split, images, np.asarray(labels, dtype=np.int64)[kept],
                        class_names=tuple(wnids))
