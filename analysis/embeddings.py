"""Feature embeddings (paper Fig. 5) from the ``embeddings`` table of ``class_analysis``.

Each student trial that ran with ``run.embedding_pixels`` stores sampled per-pixel features of its
``head`` tap with their labels. Coordinates, in order of preference: precomputed ``tsne_x``/
``tsne_y`` columns; scikit-learn's :class:`~sklearn.manifold.TSNE` (Barnes-Hut, PCA init, seeded)
on at most ``max_points`` points (stratified by class), cached under ``<out>/.cache`` by a hash of
the inputs so re-running the analysis does not recompute it; or, with ``method="pca"``, a 2-D PCA.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from segdistill.results import embedding_matrix

from .common import (
    COLUMN_W,
    DATASET,
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
from .samples import class_colours, class_names

TSNE_ITER = 750


def pca_2d(x: np.ndarray, dims: int = 2) -> np.ndarray:
    """Top-``dims`` principal components of the rows of ``x`` (N, D) (scikit-learn PCA)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    if x.shape[1] < dims or x.shape[0] <= dims:
        return np.pad(x - x.mean(0), ((0, 0), (0, max(0, dims - x.shape[1]))))[:, :dims]
    return PCA(n_components=dims, random_state=0).fit_transform(x)


def tsne_2d(x: np.ndarray, *, perplexity: float = 30.0, seed: int = 0, max_iter: int = TSNE_ITER,
            cache_dir=None) -> np.ndarray:
    """scikit-learn t-SNE of ``x`` (N, D) to (N, 2); perplexity capped at (N - 1) / 3; cached by input hash."""
    from sklearn.manifold import TSNE

    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if n < 5:
        return pca_2d(x)
    perplexity = float(min(perplexity, (n - 1) / 3.0))
    path = None
    if cache_dir is not None:
        key = hashlib.sha1(x.tobytes() + f"{x.shape}{perplexity}{seed}{max_iter}".encode()).hexdigest()[:20]
        path = cache_dir / f"tsne_{key}.npy"
        if path.is_file():
            return np.load(path)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # OpenMP threads on a shared, busy CPU are many times slower than one
        y = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=max_iter,
                 random_state=seed).fit_transform(x)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, y)
    return y


def _subsample(df: pd.DataFrame, max_points: int, seed: int) -> pd.DataFrame:
    """At most ``max_points`` rows, stratified by label (rare classes keep their points)."""
    if len(df) <= max_points:
        return df
    per = max(1, max_points // max(1, df["label"].nunique()))
    parts = [g.sample(n=min(len(g), per), random_state=seed) for _, g in df.groupby("label")]
    out = pd.concat(parts)
    if len(out) > max_points:
        out = out.sample(n=max_points, random_state=seed)
    return out.sort_values("point")


def coordinates(df: pd.DataFrame, *, method: str = "tsne", max_points: int = 600, seed: int = 0, cache_dir=None
                ) -> tuple[np.ndarray, np.ndarray, str]:
    """2-D coordinates, labels and a description for one trial's embedding rows."""
    if {"tsne_x", "tsne_y"} <= set(df.columns) and df[["tsne_x", "tsne_y"]].notna().all().all():
        return df[["tsne_x", "tsne_y"]].to_numpy(float), df["label"].to_numpy(np.int64), "t-SNE (precomputed)"
    df = _subsample(df, max_points, seed)
    feats, labels = embedding_matrix(df)
    if method == "pca":
        return pca_2d(feats), labels, f"PCA, {len(df)} pixels"
    return tsne_2d(feats, seed=seed, cache_dir=cache_dir), labels, f"t-SNE (scikit-learn), {len(df)} pixels"


def fig5_embeddings(res: Results, report: Report, *, method: str = "tsne", max_points: int = 600) -> None:
    """Paper Fig. 5: one panel per student method (baseline, ..., HWD; first seed of each) for each
    (dataset, student), points coloured by ground-truth class, a shared class legend."""
    emb = from_experiment(res.embeddings, "class_analysis", ("class_analysis",))
    if students_of(emb).empty:
        emb = res.embeddings
    emb = students_of(emb)
    made = False
    if not emb.empty:
        for (dataset, student), g in emb.groupby([DATASET, STUDENT]):
            trials = (g.drop_duplicates("trial_id").sort_values([c for c in ("run.seed", "trial_id") if c in g])
                      .drop_duplicates("method_label"))
            labels = ordered_methods(trials["method_label"])
            names = class_names(res, str(dataset))
            fig, axes = plt.subplots(1, len(labels), figsize=(max(COLUMN_W, 2.2 * len(labels)), 2.5), squeeze=False)
            how, seen = "", set()
            colours = class_colours(max(int(g["label"].max()) + 1, len(names)))
            for ax, lab in zip(axes[0], labels):
                tid = trials[trials["method_label"] == lab]["trial_id"].iloc[0]
                xy, cls, how = coordinates(g[g["trial_id"] == tid], method=method, max_points=max_points,
                                           cache_dir=report.cache)
                ax.scatter(xy[:, 0], xy[:, 1], c=colours[cls], s=3, linewidths=0, rasterized=True)
                seen |= {int(c) for c in np.unique(cls)}
                seed = trials[trials["method_label"] == lab]["run.seed"].iloc[0] if "run.seed" in trials else ""
                ax.set_title(f"{lab} (seed {seed})")
                ax.set_xticks([])
                ax.set_yticks([])
            handles = [plt.Line2D([], [], marker="o", linestyle="", markersize=4, color=colours[c],
                                  label=names.get(c, str(c))) for c in sorted(seen)]
            fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), frameon=False,
                       bbox_to_anchor=(0.5, -0.07 - 0.045 * ((len(handles) - 1) // 8)), fontsize=6,
                       handletextpad=0.1, columnspacing=0.8)
            fig.suptitle(f"Student pixel features (paper Fig. 5), {dataset}, {student}: {how}", fontsize=8)
            fig.tight_layout()
            paths = save_figure(report, slug("fig5_embeddings", dataset, student), fig)
            report.add("fig5", f"Fig. 5 t-SNE ({dataset}, {student})", paths,
                       g[g["trial_id"].isin(trials["trial_id"])])
            made = True
    if not made:
        report.skip("fig5", "Fig. 5 t-SNE of student features", "no embeddings table (class_analysis records "
                    "them with run.embedding_pixels > 0)")
