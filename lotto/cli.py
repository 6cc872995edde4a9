"""`python -m lotto <verb>`: the one entry point every workflow rule calls.

Each verb parses its arguments, imports what it needs lazily (so `--help` and small
verbs start fast), runs one library function and exits. Bad input (a lotto.core.errors.UserError,
or an OSError such as a missing file) exits with code 2 and a one-line message, never a
traceback; any other exception is a bug in lotto and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from lotto.core.errors import InvalidValue, UserError


def _spec_from_json(text: str, source: str):
    """A spec written by write-spec; anything else is a one-line SpecError naming `source`."""
    from lotto.core.spec import ExperimentSpec, SpecError

    try:
        return ExperimentSpec.from_dict(json.loads(text))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise SpecError(f"{source}: not a resolved spec ({err!r}); rerun the workflow to rewrite it") from None


def _read_spec(path: str):
    from lotto.core.spec import load_experiment

    if not path.endswith(".json"):
        return load_experiment(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: spec file not found") from None
    return _spec_from_json(text, path)


def _training_spec(args: argparse.Namespace):
    """The spec a training verb runs: --execution, when given, sets its execution-only fields
    (the workflow's spec files hold them at their defaults; lotto.core.spec_types.EXECUTION_ONLY)."""
    spec = _read_spec(args.spec)
    if args.execution is None:
        return spec
    from lotto.core.spec_types import with_execution_settings

    try:
        settings = json.loads(args.execution)
        if not isinstance(settings, dict):
            raise ValueError("expected a JSON object of setting -> value")
        return with_execution_settings(spec, settings)
    except ValueError as err:  # json.JSONDecodeError included
        raise InvalidValue(f"--execution {args.execution}: {err}") from None


def _configure_torch(threads: int) -> None:
    """Per job: `threads` CPU threads (shared by the processes torchrun started on this machine);
    on a GPU, cuDNN times its algorithms once per shape (a job trains one shape for thousands of
    steps: ResNet-20 -18% time per round on an H100)."""
    import torch

    torch.set_num_threads(max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    torch.backends.cudnn.benchmark = True


def cmd_validate(args: argparse.Namespace) -> None:
    """Every file is checked, and every problem of every file reported, before exiting."""
    from lotto.core.spec import SpecError

    problems = []
    for path in args.experiments:
        try:
            spec = _read_spec(path)
        except (ValueError, OSError) as err:
            problems.append(str(err))
        except Exception as err:  # noqa: BLE001 - a bug in lotto: reported with the file, not hidden
            problems.append(f"{path}: unexpected {type(err).__name__}: {' '.join(str(err).split())[:300]}")
        else:
            print(f"{path}: ok ({spec.name}: dense {spec.dense_key}, recipe {spec.recipe_key})")
    if problems:
        raise SpecError("\n".join(problems))


def cmd_write_spec(args: argparse.Namespace) -> None:
    from lotto.core import io

    spec = _read_spec(args.experiment) if args.experiment else _spec_from_json(args.json, "--json")
    io.write_json(args.out, spec.to_dict())


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from lotto.core import data, data_cache, image_folder

    if args.dataset in image_folder.STREAMED:  # an image folder: indexed, never copied
        from lotto.core import stream

        if not args.root:
            raise InvalidValue(f"--root is required for {args.dataset!r}: the folder holding train/ and val/")
        stream.prepare(args.dataset, args.root, args.out)
        return
    options = json.loads(args.synthetic) if args.synthetic else None
    classes = json.loads(args.torchvision) if args.torchvision else None
    data.prepare(args.dataset, args.out, root=args.root, download=args.download, synthetic_options=options,
                 torchvision_options=classes)
    print(f"prepared {args.dataset} -> {args.out}", file=sys.stderr)
    data_cache.remove_stale(Path(args.out))  # the splits of its former content can never hit again


def _seed_paths(args: argparse.Namespace) -> dict[str, list[Path | None]]:
    """Each seed's --out, --dense, --prev, --rewind-from and --scores: the paths with {seed}
    replaced by the seed (None where not given). With several seeds every given path must
    contain {seed}, or two seeds would share it."""
    paths = {}
    for flag in ("out", "dense", "prev", "rewind_from", "scores"):
        template = getattr(args, flag)
        if template is not None and len(args.seed) > 1 and "{seed}" not in template:
            raise InvalidValue(f"--{flag.replace('_', '-')} {template}: with several --seed each path must "
                               "contain {seed}, e.g. results/x/seed{seed}/round2")
        paths[flag] = [None if template is None else Path(template.replace("{seed}", str(seed)))
                       for seed in args.seed]
    return paths


@contextmanager
def _world(spec, several: bool = True):
    """The processes this job was launched as (torchrun or srun: lotto.core.distributed), joined for
    the verb; verbs that train in one process only (`several` False) refuse more than one."""
    from lotto.core import distributed
    from lotto.core.train import resolve_device

    with distributed.launched(resolve_device(spec.training.device)) as world:
        if world.size > 1 and not several:
            raise InvalidValue(f"launched as {world.size} processes, but this verb trains in one: "
                               "run it without torchrun/srun (training.devices: 1)")
        yield world


def cmd_round(args: argparse.Namespace) -> None:
    _configure_torch(args.threads)
    spec = _training_spec(args)
    with _world(spec, several=len(args.seed) == 1) as world:
        _run_round(args, spec, world.writer)


def _run_round(args: argparse.Namespace, spec, writer: bool) -> None:
    from lotto import rounds

    paths = _seed_paths(args)
    if len(args.seed) == 1 and not args.branch:
        results = {paths["out"][0]: rounds.run_round(
            spec, Path(args.data), args.seed[0], args.round, paths["out"][0],
            dense_dir=paths["dense"][0], prev_dir=paths["prev"][0],
            rewind_file=paths["rewind_from"][0], scores_file=paths["scores"][0],
        )}
    else:
        results = rounds.run_round_seeds(
            spec, Path(args.data), args.seed, args.round, paths["out"],
            dense_dirs=paths["dense"], prev_dirs=paths["prev"],
            rewind_files=paths["rewind_from"], scores_files=paths["scores"], branches=args.branch,
        )
    if writer:  # in several processes rank 0 alone reports (the others trained the same)
        for out, result in results.items():
            if len(results) > 1:
                print(f"{out}:", file=sys.stderr)
            _report(result, out)


def cmd_learn_mask(args: argparse.Namespace) -> None:
    from lotto import rounds

    _configure_torch(args.threads)
    spec = _training_spec(args)
    with _world(spec, several=False):
        rounds.run_learn_mask(spec, Path(args.data), args.seed, Path(args.weights), Path(args.out))


def cmd_replay(args: argparse.Namespace) -> None:
    from lotto import rounds

    _configure_torch(args.threads)
    spec = _training_spec(args)
    with _world(spec):
        rounds.run_replay(spec, Path(args.data), args.seed, args.step, Path(args.dense), Path(args.out))


def cmd_branch(args: argparse.Namespace) -> None:
    from lotto import rounds

    _configure_torch(args.threads)
    spec = _training_spec(args)
    with _world(spec) as world:
        result = rounds.run_branch(
            spec, Path(args.data), args.seed, args.round, args.kind,
            Path(args.round_dir), Path(args.dense), Path(args.out),
        )
        if world.writer:
            _report(result, Path(args.out))


def _report(result, out: Path) -> None:
    from lotto import rounds
    from lotto.core import masks

    rounds.print_summary(result, masks.density(masks.load(out / "mask.pt")))


def cmd_collect(args: argparse.Namespace) -> None:
    from lotto.core import metrics

    frame = metrics.read(args.inputs)
    frame["experiment"] = args.experiment
    frame = frame.sort_values(["seed", "round", "branch", "step", "split"], kind="stable")
    metrics.write_frame(args.out, frame)


def _read_metrics(paths: list[str]):
    from lotto.core import metrics

    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: metrics file not found; run the workflow (or `collect`) first")
    return metrics.read(paths)


def cmd_figure(args: argparse.Namespace) -> None:
    from lotto.outputs import figures

    frame = _read_metrics(args.metrics)
    if args.kind == "accuracy":
        figures.accuracy_vs_density(frame, args.out, which=args.which, title=args.title)
    elif args.kind == "early_stop":
        figures.early_stop_vs_density(frame, args.out, title=args.title)
    else:
        if not args.densities:
            raise InvalidValue("--kind curves needs --densities, e.g. --densities 1.0 0.5 0.2")
        figures.curves(frame, args.out, densities=args.densities, title=args.title)


def cmd_tables(args: argparse.Namespace) -> None:
    from lotto.outputs import energy, tables

    measured = energy.read(args.energy).sentence()
    tables.write_tables(_read_metrics(args.metrics), args.md, args.tex, args.html, energy=measured)


def cmd_report(args: argparse.Namespace) -> None:
    from lotto.outputs import report

    specs = {}
    for path in args.specs:
        spec = _read_spec(path)
        specs[spec.name] = spec.to_dict()
    benchmarks = [Path(p) for p in args.benchmarks]
    root = args.benchmark_root or (os.path.commonpath([p.parent for p in benchmarks]) if benchmarks else ".")
    facts = report.collect_run_facts(benchmarks, Path(root))
    report.write_report(args.out, specs=specs, figures=args.figures, tables=args.tables, run_facts=facts)


def cmd_boxes(args: argparse.Namespace) -> None:
    from lotto.outputs import figures

    figures.accuracy_boxes(_read_metrics(args.metrics), args.out, which=args.which, title=args.title)


def cmd_modification_table(args: argparse.Namespace) -> None:
    from lotto.outputs import tables

    tables.write_modification_table(_read_metrics(args.metrics), args.md, args.tex, args.html,
                                    round_=args.round, which=args.which)


def cmd_layers(args: argparse.Namespace) -> None:
    from lotto.core.masks import layer_table
    from lotto.core.model_facts import model_options, shapes_only_model
    from lotto.core.spec import DATASET_FACTS, DatasetSpec, ModelSpec

    dataset = args.dataset or ("mnist" if args.model.startswith(("lenet", "mlp")) else "cifar10")
    if dataset not in DATASET_FACTS:
        raise InvalidValue(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASET_FACTS)}")
    options = _json_object("--options", args.options)
    model = ModelSpec(args.model, width=args.width, options=None if options is None else tuple(sorted(options.items())))
    rows = layer_table(shapes_only_model(model_options(model, DatasetSpec(dataset))))
    shape = "x".join(map(str, DATASET_FACTS[dataset]["shape"]))
    print(f"{args.model} on {dataset} ({shape}): {len(rows)} prunable layers, "
          f"{sum(r['weights'] for r in rows):,} weights; pruning.exclude takes the name or the module")
    header = ("name", "module", "kind", "shape", "weights")
    table = [header] + [(r["name"], r["module"], r["kind"], "x".join(map(str, r["shape"])), f"{r['weights']:,}")
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for *text, weights in table:
        cells = [cell.ljust(width) for cell, width in zip(text, widths, strict=False)]
        print("  ".join([*cells, weights.rjust(widths[-1])]))


def _json_object(flag: str, text: str | None) -> dict | None:
    """A command-line JSON object (None when the flag is absent)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidValue(f"{flag}: {text!r} is not JSON ({err})") from err
    if not isinstance(value, dict):
        raise InvalidValue(f"{flag}: {text!r} is not a JSON object; write e.g. '{{\"zero_init_residual\": true}}'")
    return value


def cmd_model_facts(args: argparse.Namespace) -> None:
    from lotto.core import io, model_facts
    from lotto.core.spec import load_experiment

    specs = [load_experiment(path) for path in args.experiments]
    io.write_text(model_facts.TABLE, model_facts.table_text(
        model_facts.model_options(spec.model, spec.dataset) for spec in specs))
    print(f"wrote {model_facts.TABLE}")


def cmd_status(args: argparse.Namespace) -> None:
    from lotto.outputs import status

    print(status.render(Path(args.results)))


def cmd_cache(args: argparse.Namespace) -> None:
    from lotto.core import data_cache, layout

    folder = Path(layout.data_dir(args.results))
    if args.clear:
        files, size = data_cache.clear(folder)
        print(f"removed {files} splits file(s), {size / 1e6:.1f} MB, from {folder}")
    else:
        print(data_cache.describe(folder))


def cmd_eb_search(args: argparse.Namespace) -> None:
    from lotto.methods import earlybird

    _configure_torch(args.threads)
    spec = _training_spec(args)
    with _world(spec) as world:
        outcome = earlybird.search(spec, Path(args.data), args.seed, Path(args.out))
    if not world.writer:
        return
    draws = ", ".join(f"{label}: {epoch}" for label, epoch in outcome.draw_epoch.items())
    print(f"draw epochs {draws}; trained {outcome.epochs_trained} epochs ({outcome.iterations} it)",
          file=sys.stderr)


def cmd_eb_train(args: argparse.Namespace) -> None:
    from lotto.methods import earlybird

    _configure_torch(args.threads)
    spec = _training_spec(args)
    with _world(spec) as world:
        summary = earlybird.retrain(spec, Path(args.data), args.seed, Path(args.search),
                                    args.ratio, args.ticket, args.mode, Path(args.out))
    if world.writer:
        print(f"{summary['ticket']}-{summary['mode']} p={summary['ratio']}: test acc "
              f"{summary['test_accuracy']:.4f}, total training FLOPs {summary['total_flops']:.3g}", file=sys.stderr)


def cmd_eb_figures(args: argparse.Namespace) -> None:
    from lotto.outputs import eb_figures, energy

    searches = eb_figures.read_searches(args.searches)
    summaries = eb_figures.read_summaries(args.summaries)
    out = Path(args.out_dir)
    eb_figures.accuracy_vs_epoch(summaries, searches, out / "eb_accuracy.png", title=args.title)
    eb_figures.distance_matrices(searches, out / "eb_distances.png", title=args.title)
    eb_figures.flops_vs_epoch(summaries, out / "eb_flops.png", title=args.title)
    eb_figures.write_table(summaries, searches, args.table, args.table_html, title=args.title,
                           energy=energy.read(args.energy).sentence())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lotto", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = verb("validate", cmd_validate, "check experiment files and print their hashes")
    p.add_argument("experiments", nargs="+", help="experiment YAML files")

    p = verb("write-spec", cmd_write_spec, "resolve an experiment and write its spec as JSON")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="experiment YAML file")
    source.add_argument("--json", help="an already resolved spec, as JSON text")
    p.add_argument("--out", required=True)

    p = verb("prepare-data", cmd_prepare_data, "read a dataset once into a tensor cache")
    p.add_argument("--dataset", required=True)
    p.add_argument("--root", help="directory holding the raw files")
    p.add_argument("--download", action="store_true", help="let torchvision download missing data")
    p.add_argument("--synthetic", help="JSON options of the synthetic dataset")
    p.add_argument("--torchvision", help="JSON facts and split arguments of a torchvision:<Class> dataset")
    p.add_argument("--out", required=True)

    def training_args(p: argparse.ArgumentParser, several_seeds: bool = False) -> None:
        p.add_argument("--spec", required=True, help="resolved spec (.json) or experiment (.yaml)")
        p.add_argument("--data", required=True, help="prepared dataset cache")
        if several_seeds:
            p.add_argument("--seed", type=int, required=True, action="append",
                           help="repeat to train a pruned round of several seeds together "
                           "(lotto.core.vmap); each path then contains {seed}, replaced per seed")
        else:
            p.add_argument("--seed", type=int, required=True)
        p.add_argument("--threads", type=int, default=int(os.environ.get("LOTTO_THREADS", "1")))
        p.add_argument("--execution", help="JSON object of the execution-only training settings "
                       "(checkpoint_every, device, ...), replacing the spec's; unnamed ones default")

    p = verb("round", cmd_round, "train one pruning round (round 0 = dense) and write its files")
    training_args(p, several_seeds=True)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--dense", help="round 0's directory (theta_0); needed for pruned rounds")
    p.add_argument("--prev", help="the previous round's directory")
    p.add_argument("--rewind-from", help="weights file to rewind to (replay or previous rewind.pt)")
    p.add_argument("--scores", help="criterion optimal_mask: the mask logits written by learn-mask")
    p.add_argument("--branch", action="append", default=[],
                   help="repeat: also train this local control branch of each seed from the round's "
                   "mask, in the same vectorised job (lotto.core.vmap), into <out>/<branch>")
    p.add_argument("--out", required=True, help="output directory of this round")

    p = verb("learn-mask", cmd_learn_mask,
             "criterion optimal_mask: learn mask logits from frozen pretrained weights")
    training_args(p)
    p.add_argument("--weights", required=True,
                   help="the pretrained dense weights (round 0 replayed to mask_training.pretrain)")
    p.add_argument("--out", required=True, help="output logits file (mask_logits.pt)")

    p = verb("replay", cmd_replay, "weights of round 0 after STEP iterations (a rewind point)")
    training_args(p)
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--dense", required=True, help="round 0's directory")
    p.add_argument("--out", required=True, help="output weights file")

    p = verb("branch", cmd_branch, "train one control branch from a round's mask")
    training_args(p)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--kind", required=True, help="a control branch (lotto.rounds.BRANCHES)")
    p.add_argument("--round-dir", required=True, help="the round whose mask the branch uses")
    p.add_argument("--dense", required=True, help="round 0's directory")
    p.add_argument("--out", required=True)

    p = verb("collect", cmd_collect, "concatenate metrics files into one experiment table")
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("inputs", nargs="+")

    p = verb("figure", cmd_figure, "plot a figure (PNG and PDF) from metrics tables")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics parquet files")
    p.add_argument("--kind", required=True, choices=["accuracy", "early_stop", "curves"])
    p.add_argument("--out", required=True, help="output .png; the .pdf is written beside it")
    p.add_argument("--which", default="early_stop", choices=["early_stop", "final"],
                   help="kind accuracy: test accuracy at the early-stop iteration or at the end")
    p.add_argument("--densities", nargs="+", type=float, help="kind curves: densities to show (0-1]")
    p.add_argument("--title")

    p = verb("tables", cmd_tables, "summary tables (Markdown, LaTeX, HTML) from metrics tables")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics parquet files")
    p.add_argument("--md", required=True)
    p.add_argument("--tex", required=True)
    p.add_argument("--html", help="HTML fragment for the report")
    p.add_argument("--energy", nargs="*", default=[],
                   help="the jobs' energy records (lotto.gpu_slot --energy); missing ones are skipped")

    p = verb("report", cmd_report, "the HTML report: figures, tables, specs and run facts")
    p.add_argument("--out", required=True, help="report .html; links are relative to its folder")
    p.add_argument("--specs", nargs="+", required=True, help="resolved specs (.json) or experiments")
    p.add_argument("--figures", nargs="*", default=[], help="figure .png files")
    p.add_argument("--tables", nargs="*", default=[], help="table .html fragments")
    p.add_argument("--benchmarks", nargs="*", default=[], help="Snakemake benchmark .tsv files")
    p.add_argument("--benchmark-root", help="jobs are named by their path under it "
                   "(default: the deepest folder holding all benchmark files)")

    p = verb("eb-search", cmd_eb_search, "Early-Bird search: dense training with network slimming, "
             "channel masks each epoch, tickets drawn and saved")
    training_args(p)
    p.add_argument("--out", required=True, help="search directory (eb.json, masks.pt, tickets/...)")

    p = verb("eb-train", cmd_eb_train, "retrain one Early-Bird ticket (channels removed) or a baseline")
    training_args(p)
    p.add_argument("--search", required=True, help="the eb-search directory")
    p.add_argument("--ratio", type=float, required=True, help="pruning ratio, one of earlybird.ratios")
    p.add_argument("--ticket", required=True, help="eb | e<n> | final")
    p.add_argument("--mode", required=True, help="ff | reinit | lt_oneshot")
    p.add_argument("--out", required=True)

    p = verb("eb-figures", cmd_eb_figures, "Early-Bird figures (eb_accuracy, eb_distances, eb_flops) "
             "and the Table-2-shaped table")
    p.add_argument("--searches", nargs="+", required=True, help="eb.json of each seed's search")
    p.add_argument("--summaries", nargs="+", required=True, help="summary.json of each retraining")
    p.add_argument("--out-dir", required=True, help="folder of the eb_*.png figures")
    p.add_argument("--table", required=True, help="Markdown table output")
    p.add_argument("--table-html", help="the table as an HTML fragment for the report")
    p.add_argument("--title")
    p.add_argument("--energy", nargs="*", default=[],
                   help="the jobs' energy records (lotto.gpu_slot --energy); missing ones are skipped")

    p = verb("boxes", cmd_boxes, "box plots of test accuracy over seeds per density (PNG and PDF)")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics parquet files")
    p.add_argument("--out", required=True, help="output .png; the .pdf is written beside it")
    p.add_argument("--which", default="early_stop", choices=["early_stop", "final"],
                   help="test accuracy at the early-stop iteration or at the end")
    p.add_argument("--title")

    p = verb("modification-table", cmd_modification_table,
             "Mikler's Table 3.1: accuracy of each mask modification vs the unmodified ticket")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics parquet file(s) of one experiment")
    p.add_argument("--md", required=True)
    p.add_argument("--tex", required=True)
    p.add_argument("--html", help="HTML fragment for the report")
    p.add_argument("--round", type=int, help="the pruned round to tabulate (default: the last)")
    p.add_argument("--which", default="final", choices=["early_stop", "final"],
                   help="test accuracy at the early-stop iteration or at the end")

    p = verb("layers", cmd_layers, "list a model's prunable layers: readable name, module path, kind, "
             "weight shape and count (what pruning.exclude and pruning.rates refer to)")
    p.add_argument("model", help="a registered model (lotto.core.models.model_names()), torchvision:<builder> "
                   "or <module.path>:<callable>")
    p.add_argument("--dataset", help="input shape and classes (default: mnist for lenet*/mlp*, else cifar10)")
    p.add_argument("--width", type=float, default=1.0, help="model.width, the channel multiplier")
    p.add_argument("--options", help="model.options of a torchvision or import-path model, as a JSON object")

    p = verb("model-facts", cmd_model_facts, "rewrite lotto/model_facts.json, the model facts spec validation "
             "reads without torch, for the models of these experiments (tests/test_model_facts.py checks it)")
    p.add_argument("experiments", nargs="+", help="experiment YAML files (the presets: config/experiments/*.yaml)")

    p = verb("status", cmd_status, "which rounds and branches are done, running or pending")
    p.add_argument("--results", default="results")

    p = verb("cache", cmd_cache, "list the splits files that speed up job start-up (results/data/*.splits-*.pt), "
             "with their sizes; --clear removes them")
    p.add_argument("--results", default="results")
    p.add_argument("--clear", action="store_true", help="remove every splits file (and nothing else)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except (UserError, OSError) as err:  # anything else is a bug in lotto: its traceback is kept
        message = str(err).strip() or type(err).__name__
        first, *rest = message.splitlines()
        print(f"lotto {args.verb}: error: {first}", file=sys.stderr)
        for line in rest:
            print(f"  {line}", file=sys.stderr)
        return 2
    return 0
