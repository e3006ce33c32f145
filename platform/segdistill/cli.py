"""Command line: ``segdistill {distill,train,info,evaluate,export,report,dashboard}`` (also ``python -m segdistill``).

- ``distill``: train a teacher on the synthetic default (or reuse it), then distil students with
  the chosen methods, printing one row per run. The quickest end-to-end look at the core.
- ``train``: one run from flat ``--set section.field=value`` overrides (on the defaults, a ``--config``
  JSON file or a study ``--preset``).
- ``info``: registered models, datasets and methods (``--complexity``: parameters and FLOPs).
- ``evaluate``: score a model file (segdistill's or the reference code's) on a validation split.
- ``export``: a model file (segdistill ``model.pt`` / ``state.pt`` or a reference-code checkpoint) to
  the reference code's layout (``--to reference``) or to a standalone ``torch.export`` program that
  plain PyTorch runs without segdistill (``--to pt2``).
- ``report``: regenerate tables and figures from a results tree (``python -m analysis``).
- ``dashboard``: optuna-dashboard on a search study's ``optuna.journal`` (:mod:`segdistill.study.dashboard`).
Sweeps on Ray live in ``experiments/*.py`` (see the README).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, TrainConfig, flat_keys, param_owners

PRESET_NAMES = ("smoke", "demo", "paper", "released")  # = segdistill.study.presets.PRESETS (not imported: no Ray here)
TINY_TEACHER = "deeplabv3_tiny_r101"
TINY_STUDENT = "deeplabv3_tiny_r18"


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["distill.beta=0.3", "run.device=cpu"]`` -> flat dict with typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects section.field=value, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _summary_line(name: str, result: Any) -> str:
    return (f"{name:<16} mIoU {result.final_miou:6.4f}  best {result.best_miou:6.4f}  "
            f"pixel acc {result.pixel_acc:6.4f}  {result.iterations_done:>5} it  "
            f"{result.wall_time_s:7.1f} s  {result.images_per_s:7.1f} img/s")


def _configure(args: argparse.Namespace, flat: dict[str, Any]) -> TrainConfig:
    """``flat`` over the defaults, a ``--config`` JSON file or a study ``--preset``'s base config (and
    then over the preset's parameters of the method ``flat`` names, e.g. the paper's mu for HWD)."""
    if args.config and args.preset:
        raise ConfigError("give --config or --preset, not both")
    if args.preset:  # the study presets' base config (segdistill.study.presets), without Ray
        from .study.presets import get_preset

        try:
            preset = get_preset(args.preset, data_root=args.data_root, dataset=args.dataset)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return preset.base.replace(**preset.variants([flat])[0])
    base = TrainConfig.from_json(Path(args.config).read_text()) if args.config else TrainConfig()
    return base.replace(**flat)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import fit

    cfg = _configure(args, parse_overrides(args.set))
    result = fit(cfg, resume=not args.fresh)
    print(_summary_line(cfg.distill.method, result))
    print(f"checkpoint: {result.checkpoint_dir}\nmodel: {result.model_path}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """Teacher, then one student per method, all on the synthetic default; prints a table."""
    from .train import MODEL_FILE, fit

    out = Path(args.out)
    sets = parse_overrides(args.set)
    # a method's parameter (--set distill.beta=0.3) goes to the students of the methods that have it
    params = {k: v for k, v in sets.items() if k.startswith("distill.") and param_owners(k.partition(".")[2])}
    unused = [k for k in params if not set(param_owners(k.partition(".")[2])) & set(args.methods)]
    if unused:
        raise ConfigError(f"{unused}: parameters of none of the methods {args.methods}")
    common = {"optim.iterations": args.iterations, "run.eval_every": max(1, args.iterations // 4),
              "run.seed": args.seed, "data.num_classes": args.classes,
              **{k: v for k, v in sets.items() if k not in params}}
    base = TrainConfig().replace(**common)
    teacher_cfg = base.replace(**{"model.arch": args.teacher, "optim.iterations": args.teacher_iterations,
                                  "run.eval_every": max(1, args.teacher_iterations // 4),
                                  "run.out_dir": str(out / "teacher")})
    teacher_file = out / "teacher" / MODEL_FILE
    rows = []
    if teacher_file.is_file() and not args.retrain_teacher:
        print(f"reusing teacher {teacher_file}")
    else:
        rows.append(("teacher", fit(teacher_cfg, resume=not args.fresh)))
        print(_summary_line("teacher", rows[-1][1]))
    for method in args.methods:
        over = {"model.arch": args.student, "distill.method": method, "run.out_dir": str(out / f"student_{method}")}
        if method != "none":
            over.update({"distill.teacher_arch": args.teacher, "distill.teacher_checkpoint": str(teacher_file)})
        own = {k: v for k, v in params.items() if method in param_owners(k.partition(".")[2])}
        cfg = base.replace(**over, **own)
        result = fit(cfg, resume=not args.fresh)
        rows.append((f"student {method}", result))
        print(_summary_line(f"student {method}", result))
    print("\nsummary")
    for name, result in rows:
        print("  " + _summary_line(name, result))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .data import DATASETS
    from .losses import METHODS
    from .models import MODELS

    if args.complexity:
        import torch

        from .models import build_model, count_flops, count_params, count_reference_macs

        print(f"{args.classes} classes, output stride 8, 512x512 input. params: with / without the aux head; GFLOPs: "
              "forward FLOPs (2 per multiply-add, no aux head); paper GMACs: the reference code's counter (the "
              "paper's 'FLOPs' column: dilation ignored, aux head included; docs/REFERENCE.md)")
        print(f"{'model':<22} {'params':>9} {'(no aux)':>9} {'GFLOPs':>8} {'paper GMACs':>12}")
        for name in sorted(MODELS):
            with torch.device("meta"):
                params = count_params(build_model(name, args.classes, aux=True))
                params_no_aux = count_params(build_model(name, args.classes, aux=False))
            gflops = count_flops(name, args.classes, size=512) / 1e9
            paper = count_reference_macs(name, args.classes, size=512) / 1e9
            print(f"{name:<22} {params / 1e6:8.2f}M {params_no_aux / 1e6:8.2f}M {gflops:8.1f} {paper:12.1f}")
        return 0
    info = {"models": sorted(MODELS), "datasets": sorted(DATASETS), "methods": ["none", *sorted(METHODS)],
            "config_keys": list(flat_keys())}
    print(json.dumps(info, indent=1))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a model file (segdistill's or the reference code's) on a dataset's validation split with
    the trainer's evaluation (whole images, ``model.eval_align_corners`` upsampling, mIoU over the
    classes present)."""
    from .checkpoints import check_preprocessing, describe_format, load_model, read_model_file
    from .evaluation import evaluate
    from .runstate import setup

    file = read_model_file(args.model)
    arch = args.arch or file.arch
    if arch is None:
        raise ConfigError(f"{args.model} is a reference-code checkpoint, which does not name its architecture; give --arch")
    flat = {"model.arch": arch, "model.pretrained": "", "model.aux": False, "distill.method": "none",
            "distill.teacher_arch": "", "distill.teacher_checkpoint": "", "run.embedding_pixels": 0,
            "run.sample_images": 0, "run.progress": False, "run.out_dir": args.out_dir,
            **parse_overrides(args.set)}
    cfg = _configure(args, flat)
    model, file = load_model(file, arch=arch, aux=False)
    check_preprocessing(file.preprocessing, cfg.data, field="model", value=args.model, why=describe_format(file))
    run = setup(cfg)
    if file.num_classes != run.num_classes:
        raise ConfigError(f"{args.model} predicts {file.num_classes} classes, but {cfg.data.name} has {run.num_classes}")
    run.student.load_state_dict(model.state_dict())
    conf = evaluate(run)["conf"]
    print(f"{arch} on {cfg.data.name} val ({len(run.val_ds)} images, eval_align_corners="
          f"{cfg.model.eval_align_corners}): mIoU {conf['miou']:.4f}  (reference all-classes average "
          f"{conf['miou_all_classes']:.4f})  pixel acc {conf['pixel_acc']:.4f}  "
          f"mean acc {conf['mean_acc']:.4f}  classes present {conf['classes_present']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoints import eval_align_corners_of_file, load_model, preprocessing_of_file, read_model_file
    from .export import export_program, export_reference

    try:
        file = read_model_file(args.model)
        model, file = load_model(file, arch=args.arch, aux=args.to == "reference")
        if args.to == "reference":
            out = export_reference(model, args.out)
    except (ValueError, FileNotFoundError) as exc:  # a file that does not fit, a model without a reference layout
        print(f"segdistill export: {exc}", file=sys.stderr)
        return 2
    if args.to == "reference":
        print(f"wrote {out}: the reference code's state dict of {model.arch} ({file.num_classes} classes"
              f"{', with its aux head' if model.aux_head is not None else ''})")
        if model.aux_head is None and "mbv2" not in model.arch:
            print("note: the model has no aux head (it was trained with model.aux=false); the reference's eval.py "
                  "builds ResNet models with one and loads strictly, so it will report missing auxlayer.* keys",
                  file=sys.stderr)
        return 0
    prep = preprocessing_of_file(file)
    meta = {"arch": model.arch, "num_classes": file.num_classes, "source": str(file.path), "source_format": file.format}
    out = export_program(model.eval(), args.out, preprocessing=prep, align_corners=eval_align_corners_of_file(file),
                         metadata=meta)
    print(f"wrote {out}: {model.arch} ({file.num_classes} classes) as a torch.export program; in plain PyTorch:\n"
          f"  ep = torch.export.load({str(out)!r})\n"
          "  logits = ep.module()(image.float())  # (B, 3, H, W) RGB in [0, 255] -> (B, C, H, W) logits")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import runpy

    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    sys.argv = ["analysis", "--results", args.results, "--out", args.out]
    runpy.run_module("analysis", run_name="__main__")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .study.dashboard import DashboardError, find_journal, serve

    try:
        journal = find_journal(args.study, args.results)
        serve(journal, host=args.host, port=args.port)
    except DashboardError as exc:
        print(f"segdistill dashboard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors naming the flag and value (the usage only with --help); also
    the experiment scripts' parser (segdistill.study.cli_args)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="segdistill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors (default: one line)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)

    t = sub.add_parser("train", help="one training run from flat config overrides")
    t.add_argument("--config", help="JSON file with a flat config (TrainConfig.to_json())")
    t.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="start from a study preset's base config (paper: the paper's recipe and the reference "
                        "code's conventions; released: the authors' released HWD command, mu 1 and no N_c "
                        "correction, which produced the published numbers; both need --data-root)")
    t.add_argument("--data-root", default="", help="dataset directory (with --preset paper/released)")
    t.add_argument("--dataset", default=None,
                   help="dataset name for --preset (paper default: ade20k; released default: cityscapes)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. distill.method=hwd optim.iterations=200")
    t.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in run.out_dir")
    t.set_defaults(fn=cmd_train)

    d = sub.add_parser("distill", help="train a tiny teacher, then distil students (synthetic default)")
    d.add_argument("--out", default="runs/distill")
    d.add_argument("--teacher", default=TINY_TEACHER)
    d.add_argument("--student", default=TINY_STUDENT)
    d.add_argument("--methods", nargs="+", default=["none", "cwd", "hwd"])
    d.add_argument("--iterations", type=int, default=300, help="student iterations")
    d.add_argument("--teacher-iterations", type=int, default=600)
    d.add_argument("--classes", type=int, default=24)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    d.add_argument("--retrain-teacher", action="store_true")
    d.add_argument("--fresh", action="store_true")
    d.set_defaults(fn=cmd_distill)

    i = sub.add_parser("info", help="list models, datasets, methods and config keys")
    i.add_argument("--complexity", action="store_true", help="params and FLOPs (2 per multiply-add) at 512x512")
    i.add_argument("--classes", type=int, default=150)
    i.set_defaults(fn=cmd_info)

    v = sub.add_parser("evaluate", help="score a model file on a dataset's validation split")
    v.add_argument("model", help="model.pt / state.pt written by segdistill, or a reference-code checkpoint (.pth)")
    v.add_argument("--arch", default=None, help="architecture of a reference-code checkpoint, e.g. deeplabv3_r101")
    v.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="data and evaluation settings of a study preset (paper/released: the reference code's conventions)")
    v.add_argument("--config", help="JSON file with a flat config (TrainConfig.to_json())")
    v.add_argument("--data-root", default="", help="dataset directory (with --preset paper/released)")
    v.add_argument("--dataset", default=None,
                   help="dataset name for --preset (paper default: ade20k; released default: cityscapes)")
    v.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. run.amp=false data.max_val_images=100")
    v.add_argument("--out-dir", default="runs/evaluate", help="run.out_dir (nothing is written there)")
    v.set_defaults(fn=cmd_evaluate)

    e = sub.add_parser("export", help="a model file to the reference code's layout or a standalone torch.export program")
    e.add_argument("model", help="model.pt / state.pt written by segdistill, or a reference-code checkpoint (.pth)")
    e.add_argument("--to", choices=("reference", "pt2"), required=True,
                   help="reference: torch.save(state_dict) with the reference's keys (its eval.py reads it); "
                        "pt2: torch.export program with preprocessing and upsampling, no segdistill needed")
    e.add_argument("--out", required=True, help="output file (.pth for reference, .pt2 for pt2)")
    e.add_argument("--arch", default=None, help="architecture of a reference-code checkpoint (it does not say), "
                   "e.g. deeplabv3_r101; checked against segdistill files")
    e.set_defaults(fn=cmd_export)

    r = sub.add_parser("report", help="tables and figures from a results tree")
    r.add_argument("--results", default="results")
    r.add_argument("--out", default="reports")
    r.set_defaults(fn=cmd_report)

    b = sub.add_parser("dashboard", help="optuna-dashboard on a search study's optuna.journal")
    b.add_argument("study", help="a study name under --results, a study directory or an optuna.journal file")
    b.add_argument("--results", default="results", help="results root holding the study (default: results)")
    b.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    b.add_argument("--port", type=int, default=8080)
    b.set_defaults(fn=cmd_dashboard)
    for command in sub.choices.values():  # --debug before or after the command
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .models.weights import WeightsError

    try:
        return args.fn(args)
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"segdistill: configuration error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:  # --config FILE that is not JSON
        if args.debug:
            raise
        print(f"segdistill: --config {getattr(args, 'config', '')!r} is not a JSON config file: {exc}", file=sys.stderr)
        return 2
    except (WeightsError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        if args.debug:
            raise
        print(f"segdistill: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segdistill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
