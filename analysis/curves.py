"""Training curves per study and (dataset, student): the total loss and val mIoU against
iteration, one line per method (per ``setting`` in ablation studies), mean over seeds with the
seed spread (± std) shaded. Teachers are left out (their curves live in the zoo's records)."""

from __future__ import annotations

import pandas as pd

from .common import (
    DATASET,
    FULL_W,
    STUDENT,
    Report,
    Results,
    method_colour,
    method_sort_key,
    percent_factor,
    plt,
    save_figure,
    slug,
)

MAX_LINES = 14


def _loss_column(df: pd.DataFrame) -> str | None:
    losses = [c for c in df.columns if c.startswith("loss/") and df[c].notna().any()]
    return "loss/total" if "loss/total" in losses else (sorted(losses)[0] if losses else None)


def _line_key(g: pd.DataFrame) -> str:
    """``setting`` where a study varies it within a method (ablations), else ``method_label``."""
    if "setting" in g and g["setting"].notna().any():
        per_method = g.dropna(subset=["setting"]).groupby("method_label")["setting"].nunique()
        if (per_method > 1).any() and g["setting"].nunique() <= MAX_LINES:
            return "setting"
    return "method_label"


def _band(ax, t: pd.DataFrame, y: str, f: float, colour: str, label: str, marker: str | None = None) -> None:
    s = t[["trial_id", "iteration", y]].dropna()
    if s.empty:
        return
    agg = s.groupby("iteration")[y].agg(["mean", "std", "count"]).reset_index()
    ax.plot(agg["iteration"], agg["mean"] * f, color=colour, linewidth=1.0, marker=marker, ms=2.5,
            label=f"{label} (n={s['trial_id'].nunique()})")
    if (agg["count"] > 1).any():
        ax.fill_between(agg["iteration"], (agg["mean"] - agg["std"].fillna(0)) * f,
                        (agg["mean"] + agg["std"].fillna(0)) * f, color=colour, alpha=0.15, linewidth=0)


def fig_curves(res: Results, report: Report) -> None:
    df = res.curves
    made = False
    if not df.empty:
        df = df[df["method_label"] != "teacher"]
        df = df.assign(_pair=df[DATASET].astype(str) + "_" + df[STUDENT].astype(str))
        for (study, pair), g in df.groupby(["study", "_pair"]):
            several = df[df["study"] == study]["_pair"].nunique() > 1
            loss = _loss_column(g)
            has_val = "val/miou" in g and g["val/miou"].notna().any()
            if g.empty or (loss is None and not has_val):
                continue
            key = _line_key(g)
            if key == "method_label":
                lines = sorted(g[key].dropna().unique(), key=method_sort_key)
                colours = {lab: method_colour(lab) for lab in lines}
            else:
                lines = sorted(g[key].dropna().astype(str).unique())
                colours = {lab: plt.get_cmap("viridis")(i / max(1, len(lines) - 1)) for i, lab in enumerate(lines)}
                for lab in g[g[key].isna()]["method_label"].unique():
                    lines.append(lab)
                    colours[lab] = method_colour(lab)
            f = percent_factor(g["val/miou"]) if has_val else 1.0
            fig, axes = plt.subplots(1, 2, figsize=(FULL_W, 2.5), squeeze=False)
            settings = set(g["setting"].dropna().astype(str)) if key == "setting" else set()
            for lab in lines:
                if lab in settings:
                    t = g[g["setting"].astype(str) == lab]
                elif key == "setting":
                    t = g[(g["method_label"] == lab) & g["setting"].isna()]
                else:
                    t = g[g["method_label"] == lab]
                t = t.sort_values("iteration")
                if loss is not None:
                    _band(axes[0, 0], t, loss, 1.0, colours[lab], lab)
                if has_val:
                    _band(axes[0, 1], t, "val/miou", f, colours[lab], lab, marker="o")
            axes[0, 0].set_ylabel(loss or "loss")
            if loss is not None:
                lv = pd.to_numeric(g[loss], errors="coerce")
                if lv.min() > 0 and lv.max() / lv.min() > 10:
                    axes[0, 0].set_yscale("log")
            axes[0, 1].set_ylabel("val mIoU (%)" if f == 100 else "val mIoU")
            for ax in axes[0]:
                ax.set_xlabel("iteration")
                ax.grid(alpha=0.3)
            axes[0, 1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                              ncol=1 if len(lines) <= 10 else 2)
            where = f"{study}, {g[DATASET].iloc[0]}, {g[STUDENT].iloc[0]}" if several else study
            fig.suptitle(f"Training curves, {where}: mean over runs (seeds), ± std shaded", fontsize=8.5)
            fig.tight_layout()
            paths = save_figure(report, slug("curves", study, pair if several else ""), fig)
            report.add("curves", f"training curves ({where})", paths, g)
            made = True
    if not made:
        report.skip("curves", "training curves", "no curves table")
