"""Qualitative predictions (paper Fig. 4) from the ``samples`` table: image, ground truth, then one
column per method (first seed of each), one row per validation image."""

from __future__ import annotations

import numpy as np
import pandas as pd

from segdistill.results import decode_sample

from .common import DATASET, STUDENT, Report, Results, method_sort_key, plt, save_figure, slug

IGNORE = 255


def palette(n: int = 256, seed: int = 7) -> np.ndarray:
    """A fixed (n, 3) uint8 colour table; the ignore index is black."""
    colours = np.random.default_rng(seed).integers(40, 256, size=(n, 3), dtype=np.uint8)
    colours[IGNORE % n] = 0
    return colours


def colourise(label: np.ndarray) -> np.ndarray:
    pal = palette()
    return pal[np.clip(label.astype(np.int64), 0, len(pal) - 1)]


def fig4_samples(res: Results, report: Report, *, max_images: int = 4) -> None:
    df = res.samples
    made = False
    if not df.empty:
        students = df[df["method_label"] != "teacher"]
        for (dataset, student), g in students.groupby([DATASET, STUDENT]):
            teachers = df[(df["method_label"] == "teacher") & (df[DATASET] == dataset)]
            g = pd.concat([g, teachers])
            sort_cols = [c for c in ("run.seed", "trial_id") if c in g]
            firsts = g.drop_duplicates("trial_id").sort_values(sort_cols).drop_duplicates("method_label")
            labels = sorted(firsts["method_label"], key=method_sort_key)
            labels = [lab for lab in labels if lab != "teacher"] + (["teacher"] if "teacher" in labels else [])
            chosen = {lab: g[g["trial_id"] == firsts[firsts["method_label"] == lab]["trial_id"].iloc[0]] for lab in labels}
            common = sorted(set.intersection(*(set(c["sample_index"]) for c in chosen.values())))[:max_images]
            if not common:
                continue
            cols = ["image", "GT", *labels]
            fig, axes = plt.subplots(len(common), len(cols), figsize=(2.2 * len(cols), 2.0 * len(common)), squeeze=False)
            for r, idx in enumerate(common):
                first = decode_sample(chosen[labels[0]].set_index("sample_index").loc[idx])
                panels = [first["image"], colourise(first["label"])]
                panels += [colourise(decode_sample(chosen[lab].set_index("sample_index").loc[idx])["prediction"])
                           for lab in labels]
                for c, (ax, img) in enumerate(zip(axes[r], panels)):
                    ax.imshow(img, interpolation="nearest")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if r == 0:
                        ax.set_title(cols[c], fontsize=9)
            fig.suptitle(f"Qualitative results (paper Fig. 4), {dataset}, student {student}", fontsize=9)
            save_figure(report, slug("fig4_samples", dataset, student), fig)
            made = True
    if not made:
        report.skip("Fig. 4 qualitative samples", "no samples table")
