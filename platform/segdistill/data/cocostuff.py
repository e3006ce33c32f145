"""COCO-Stuff 164k in its released layout (``stuffthingmaps_trainval2017``).

``<root>/images/{train2017,val2017}/<stem>.jpg`` and ``<root>/annotations/{train2017,val2017}/<stem>.png``
with raw ids 0..181 (= COCO category id - 1) and 255 for unlabelled. Of the 182 ids, 171 are used:
80 things (11 of the 91 thing ids have no annotations) and 91 stuff classes. The used ids map to
0..170 in order; the 11 unused ids and 255 become ignore (255). Ids 182..254 do not occur in the
release: a label file holding one raises ``ValueError`` naming it (converted or foreign labels).

Note (docs/REFERENCE.md "Labels"): the reference code averages IoU over all 182 ids; evaluating over the 171 used
classes (this reader) is the correct protocol. mmseg's converted ``*_labelTrainIds.png`` files are
not read; point ``root`` at the raw annotation PNGs.
"""

from __future__ import annotations

from pathlib import Path

from segdistill.config import DataConfig
from segdistill.data.files import FilePairSource, make_lut, pair_files, require_root
from segdistill.data.registry import IGNORE_INDEX, DatasetInfo, register_dataset

COCOSTUFF_CLASSES: tuple[str, ...] = (
    # 80 things
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
    # 91 stuff
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper",
    "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops",
    "window-blind", "window-other", "wood",
)

NUM_RAW_IDS = 182
# Raw (0-based) thing ids without annotations: street sign, hat, shoe, eye glasses, plate, mirror,
# window, desk, door, blender, hair brush.
COCOSTUFF_UNUSED_IDS: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCOSTUFF_ID_TO_TRAINID: dict[int, int] = {
    raw: i for i, raw in enumerate(r for r in range(NUM_RAW_IDS) if r not in COCOSTUFF_UNUSED_IDS)
}

# raw label ids the released files hold (255 = void is tolerated); any other id is an error
RAW_IDS: tuple[int, ...] = (*range(NUM_RAW_IDS), IGNORE_INDEX)
_SPLITS = {"train": "train2017", "val": "val2017"}
_LAYOUT = "images/{train2017,val2017}/*.jpg and annotations/{train2017,val2017}/*.png (raw ids 0..181)"


def cocostuff_pairs(root: Path, split: str, limit: int = 0) -> list[tuple[Path, Path]]:
    img_dir = root / "images" / split
    images = list(img_dir.glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"expected COCO-Stuff images under {img_dir}/*.jpg; found none")
    ann_dir = root / "annotations" / split
    return pair_files(images, lambda p: ann_dir / f"{p.stem}.png", dataset="COCO-Stuff", limit=limit)


@register_dataset("cocostuff")
class COCOStuff:
    """COCO-Stuff 164k, 171 used classes (raw ids 0..181 -> 0..170, unused -> ignore)."""

    @staticmethod
    def info(cfg: DataConfig) -> DatasetInfo:
        return DatasetInfo("cocostuff", len(COCOSTUFF_CLASSES), COCOSTUFF_CLASSES, IGNORE_INDEX, val_batchable=False)

    @staticmethod
    def sources(cfg: DataConfig) -> tuple[FilePairSource, FilePairSource]:
        root = require_root(cfg, "COCO-Stuff", _LAYOUT)
        lut = make_lut(COCOSTUFF_ID_TO_TRAINID, IGNORE_INDEX)
        train = FilePairSource(cocostuff_pairs(root, _SPLITS["train"], cfg.max_train_images), lut, "COCO-Stuff",
                               raw_ids=RAW_IDS)
        val = FilePairSource(cocostuff_pairs(root, _SPLITS["val"], cfg.max_val_images), lut, "COCO-Stuff",
                             raw_ids=RAW_IDS)
        return train, val
