"""Qualitative predictions (paper Fig. 4) from the ``samples`` table of ``class_analysis``: image,
ground truth, then baseline, CWD, HWD (and any other method; first seed of each), one row per
validation image, with a legend of the classes shown."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from segdistill.results import decode_sample

from .common import (
    DATASET,
    FULL_W,
    STUDENT,
    Report,
    Results,
    from_experiment,
    ordered_methods,
    plt,
    save_figure,
    slug,
    students_of,
)

IGNORE = 255


def class_colours(n: int) -> np.ndarray:
    """(max(n, 256), 3) float colours: tab20, tab20b, tab20c for the first 60 class ids, then a
    seeded random table; the ignore index is black."""
    base = np.concatenate([np.asarray(colormaps[m].colors)[:, :3] for m in ("tab20", "tab20b", "tab20c")])
    extra = np.random.default_rng(7).uniform(0.15, 0.95, size=(max(n, 256), 3))
    out = np.concatenate([base, extra])[: max(n, 256)]
    out[IGNORE] = 0.0
    return out


def class_names(res: Results, dataset: str) -> dict[int, str]:
    """class id -> name for ``dataset`` from the per_class table (empty if none)."""
    pc = res.per_class
    if pc.empty or DATASET not in pc:
        return {}
    rows = pc[pc[DATASET].astype(str) == dataset].drop_duplicates("class_id")
    return {int(i): str(n) for i, n in zip(rows["class_id"], rows["class_name"])}


def colourise(label: np.ndarray, colours: np.ndarray | None = None) -> np.ndarray:
    colours = class_colours(256) if colours is None else colours
    return colours[np.clip(label.astype(np.int64), 0, len(colours) - 1)]


def fig4_samples(res: Results, report: Report, *, max_images: int = 4) -> None:
    df = from_experiment(res.samples, "class_analysis", ("class_analysis",))
    if students_of(df).empty:
        df = res.samples
    made = False
    if not df.empty:
        students = students_of(df)
        for (dataset, student), g in students.groupby([DATASET, STUDENT]):
            sort_cols = [c for c in ("run.seed", "trial_id") if c in g]
            firsts = g.drop_duplicates("trial_id").sort_values(sort_cols).drop_duplicates("method_label")
            labels = ordered_methods(firsts["method_label"])
            chosen = {lab: g[g["trial_id"] == firsts[firsts["method_label"] == lab]["trial_id"].iloc[0]] for lab in labels}
            common = sorted(set.intersection(*(set(c["sample_index"]) for c in chosen.values())))[:max_images]
            if not common:
                continue
            names = class_names(res, str(dataset))
            colours = class_colours(len(names))
            cols = ["image", "ground truth", *labels]
            w = min(FULL_W, 1.25 * len(cols))
            first = decode_sample(chosen[labels[0]].set_index("sample_index").loc[common[0]])
            aspect = first["image"].shape[0] / first["image"].shape[1]
            fig, axes = plt.subplots(len(common), len(cols), figsize=(w, w / len(cols) * aspect * len(common) + 0.5),
                                     squeeze=False)
            shown: set[int] = set()
            for r, idx in enumerate(common):
                first = decode_sample(chosen[labels[0]].set_index("sample_index").loc[idx])
                preds = [decode_sample(chosen[lab].set_index("sample_index").loc[idx])["prediction"] for lab in labels]
                panels = [first["image"], colourise(first["label"], colours)] + [colourise(p, colours) for p in preds]
                for arr in (first["label"], *preds):
                    shown |= {int(v) for v in np.unique(arr) if v != IGNORE}
                for c, (ax, img) in enumerate(zip(axes[r], panels)):
                    ax.imshow(img, interpolation="nearest")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if r == 0:
                        ax.set_title(cols[c], fontsize=7.5)
            handles = [plt.Rectangle((0, 0), 1, 1, color=colours[c], label=names.get(c, str(c))) for c in sorted(shown)]
            ncol = min(6, max(1, len(handles)))
            fig.legend(handles=handles, loc="upper center", ncol=ncol, frameon=False, fontsize=6,
                       bbox_to_anchor=(0.5, 0.0), handlelength=1.0, columnspacing=0.8)
            fig.suptitle(f"Qualitative results (paper Fig. 4), {dataset}, student {student}", fontsize=8)
            fig.tight_layout(h_pad=0.2, w_pad=0.2)
            paths = save_figure(report, slug("fig4_samples", dataset, student), fig)
            report.add("fig4", f"Fig. 4 qualitative ({dataset}, {student})", paths,
                       pd.concat(chosen.values()))
            made = True
    if not made:
        report.skip("fig4", "Fig. 4 qualitative predictions", "no samples table (class_analysis records them "
                    "with run.sample_images > 0)")
