"""Training curves per study: the total loss (or the first logged loss term) and val mIoU vs
iteration, one line per trial coloured by method."""

from __future__ import annotations

import pandas as pd

from .common import Report, Results, method_sort_key, percent_factor, plt, save_figure, slug


def _loss_column(df: pd.DataFrame) -> str | None:
    losses = [c for c in df.columns if c.startswith("loss/") and df[c].notna().any()]
    return "loss/total" if "loss/total" in losses else (sorted(losses)[0] if losses else None)


def fig_curves(res: Results, report: Report) -> None:
    df = res.curves
    made = False
    if not df.empty:
        for study, g in df.groupby("study"):
            loss = _loss_column(g)
            has_val = "val/miou" in g and g["val/miou"].notna().any()
            if loss is None and not has_val:
                continue
            labels = sorted(g["method_label"].unique(), key=method_sort_key)
            colours = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
            f = percent_factor(g["val/miou"]) if has_val else 1.0
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), squeeze=False)
            seen: set[str] = set()
            for tid, t in g.sort_values("iteration").groupby("trial_id"):
                lab = t["method_label"].iloc[0]
                kw = dict(color=colours[lab], alpha=0.8, linewidth=1.0, label=None if lab in seen else lab)
                seen.add(lab)
                if loss is not None:
                    s = t[["iteration", loss]].dropna()
                    axes[0, 0].plot(s["iteration"], s[loss], **kw)
                if has_val:
                    s = t[["iteration", "val/miou"]].dropna()
                    axes[0, 1].plot(s["iteration"], s["val/miou"] * f, marker=".", **kw)
            axes[0, 0].set_ylabel(loss or "loss")
            axes[0, 1].set_ylabel("val mIoU (%)" if f == 100 else "val mIoU")
            for ax in axes[0]:
                ax.set_xlabel("iteration")
                ax.grid(alpha=0.3)
            axes[0, 0].legend(fontsize=8)
            fig.suptitle(f"Training curves: study {study}", fontsize=9)
            save_figure(report, slug("curves", study), fig)
            made = True
    if not made:
        report.skip("training curves", "no curves table")
