"""Feature-embedding figure (paper Fig. 5) from the ``embeddings`` table.

Coordinates, in order of preference: precomputed ``tsne_x``/``tsne_y`` columns; a small exact
t-SNE in NumPy (scikit-learn is not a dependency; O(N^2), so points are subsampled to
``max_points``); or, with ``method="pca"``, a 2-D PCA projection. The figure title says which.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from segdistill.results import embedding_matrix

from .common import DATASET, STUDENT, Report, Results, method_sort_key, plt, save_figure, slug


def pca_2d(x: np.ndarray, dims: int = 2) -> np.ndarray:
    """Project rows of ``x`` (N, D) onto their top ``dims`` principal components."""
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[1] <= dims:
        return np.pad(x, ((0, 0), (0, dims - x.shape[1])))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:dims].T


def _joint_p(d2: np.ndarray, perplexity: float, iters: int = 60) -> np.ndarray:
    """Symmetric t-SNE affinities from squared distances (vectorised bisection on the precision)."""
    n = d2.shape[0]
    target = np.log(perplexity)
    lo, hi = np.full(n, 1e-20), np.full(n, 1e20)
    beta = np.ones(n)
    mask = ~np.eye(n, dtype=bool)
    d2 = d2 / max(np.median(d2[mask]), 1e-12)
    for _ in range(iters):
        p = np.exp(-d2 * beta[:, None]) * mask
        s = p.sum(1) + 1e-300
        entropy = np.log(s) + beta * (d2 * p).sum(1) / s
        too_flat = entropy > target  # raise the precision
        lo = np.where(too_flat, beta, lo)
        hi = np.where(too_flat, hi, beta)
        beta = np.where(hi < 1e19, np.sqrt(lo * hi), beta * 2.0)
    p = np.exp(-d2 * beta[:, None]) * mask
    p /= p.sum(1, keepdims=True) + 1e-300
    p = (p + p.T) / (2 * n)
    return np.maximum(p, 1e-12)


def tsne_2d(x: np.ndarray, *, perplexity: float = 30.0, iterations: int = 300, seed: int = 0) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) of ``x`` (N, D) to (N, 2), with early exaggeration,
    momentum and gains. Meant for a few hundred to ~1000 points."""
    n = x.shape[0]
    if n < 4:
        return pca_2d(x)
    x = pca_2d(x, min(30, x.shape[1])) if x.shape[1] > 30 else x - x.mean(0)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    p = _joint_p(d2, min(perplexity, (n - 1) / 3.0))
    rng = np.random.default_rng(seed)
    y = rng.normal(scale=1e-4, size=(n, 2))
    velocity, gains = np.zeros_like(y), np.ones_like(y)
    lr = max(n / 12.0, 50.0)
    exaggerate = min(100, iterations // 3)
    for it in range(iterations):
        pp = p * 12.0 if it < exaggerate else p
        sy = (y * y).sum(1)
        num = 1.0 / (1.0 + np.maximum(sy[:, None] + sy[None, :] - 2 * y @ y.T, 0.0))
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        pq = (pp - q) * num
        grad = 4.0 * (np.diag(pq.sum(1)) - pq) @ y
        gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(0.01)
        velocity = (0.5 if it < 250 else 0.8) * velocity - lr * gains * grad
        y = y + velocity
        y -= y.mean(0)
    return y


def coordinates(df: pd.DataFrame, *, method: str = "tsne", max_points: int = 600, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray, str]:
    """2-D coordinates, labels and a description for one trial's embedding rows."""
    if {"tsne_x", "tsne_y"} <= set(df.columns) and df[["tsne_x", "tsne_y"]].notna().all().all():
        return df[["tsne_x", "tsne_y"]].to_numpy(float), df["label"].to_numpy(np.int64), "t-SNE (precomputed)"
    if len(df) > max_points:
        df = df.sample(n=max_points, random_state=seed).sort_values("point")
    feats, labels = embedding_matrix(df)
    if method == "pca":
        return pca_2d(feats), labels, "PCA projection (t-SNE not requested)"
    return tsne_2d(feats, seed=seed), labels, f"t-SNE (NumPy exact, {len(df)} points)"


def fig5_embeddings(res: Results, report: Report, *, method: str = "tsne", max_points: int = 600) -> None:
    """Paper Fig. 5: one embedding panel per method for each (dataset, student)."""
    emb = res.embeddings
    if emb.empty:
        report.skip("Fig. 5 t-SNE embeddings", "no embeddings table")
        return
    made = False
    for (dataset, student), g in _groups(emb):
        trials = (g.drop_duplicates("trial_id").sort_values([c for c in ("run.seed", "trial_id") if c in g])
                  .drop_duplicates("method_label"))
        labels = sorted(trials["method_label"], key=method_sort_key)
        fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels), 3.2), squeeze=False)
        how = ""
        for ax, lab in zip(axes[0], labels):
            tid = trials[trials["method_label"] == lab]["trial_id"].iloc[0]
            xy, cls, how = coordinates(g[g["trial_id"] == tid], method=method, max_points=max_points)
            ax.scatter(xy[:, 0], xy[:, 1], c=cls % 20, cmap="tab20", vmin=0, vmax=19, s=4)
            ax.set_title(lab)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"Feature embeddings (paper Fig. 5), {dataset}, {student}: {how}", fontsize=9)
        save_figure(report, slug("fig5_embeddings", dataset, student), fig)
        made = True
    if not made:
        report.skip("Fig. 5 t-SNE embeddings", "no student embeddings")


def _groups(emb: pd.DataFrame):
    students = emb[emb["method_label"] != "teacher"]
    for (dataset, student), g in students.groupby([DATASET, STUDENT]):
        yield (dataset, student), emb[(emb[DATASET] == dataset)
                                      & ((emb[STUDENT] == student) | (emb["method_label"] == "teacher"))]
