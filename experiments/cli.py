"""The ``etree`` command: ``run`` a spec, ``plot`` a run folder, ``list`` what a spec can name.

``etree run`` is a thin layer over the Python API (``experiments.api``). Bad input of
any kind, a command line argparse cannot read included, ends with exit status 2 and one
``error:`` line on stderr naming the field; nothing half-written is left behind, and no
folder etree did not write is replaced (``experiments.run_folder``). Ctrl-C and SIGTERM end
a command with one line saying where it stopped (exit status 130 and 143).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from etree.core.errors import EtreeError
from etree.core.version import __version__
from experiments.interrupts import RunInterrupted, exit_status, terminate_as_interrupt

if TYPE_CHECKING:  # the commands import their modules lazily, so `etree --help` stays fast
    from etree.engine.workload import Workload
    from experiments.spec import Spec

DEFAULT_SPEC = Path(__file__).with_name("default.toml")
DEFAULT_CHECKPOINT_EVERY = 5
LISTS = ("protocols", "models", "datasets", "topologies", "partitions")


class UsageError(EtreeError):
    """A command line argparse cannot read: the one ``error:`` line (exit 2) every other mistake gets."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _path(text: str) -> Path:
    """An ``--out`` value: a path, never empty (``Path("")`` would be the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a path such as results/mine")
    return Path(text)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="etree", description="Decentralized edge federated learning simulator.")
    parser.add_argument("--version", action="version", version=f"etree {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an experiment spec and write its run folder")
    run.add_argument("spec", nargs="?", help="TOML spec (default: the built-in default)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. --set topology.devices=200 (repeatable)",
    )
    run.add_argument("--out", type=_path, help="run folder (default: results/<spec name>)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULT_CHECKPOINT_EVERY,
        metavar="N",
        help=f"checkpoint into RUN_DIR/checkpoint/ every N rounds (default {DEFAULT_CHECKPOINT_EVERY}; 0: never)",
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the interrupted run in RUN_DIR from its last checkpoint (no SPEC, no --set)",
    )
    tree = commands.add_parser("tree", help="build a spec's aggregation tree, print it and draw it over the topology")
    tree.add_argument("spec", help="TOML spec with a tree protocol (etree, grouped, hierfavg)")
    tree.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tree.add_argument("--protocol", help="label of the protocol whose tree to show (default: the first with clusters)")
    tree.add_argument("--out", type=_path, help="PNG path (default: results/<spec name>/tree_<label>.png)")
    table3 = commands.add_parser("table3", help="run the E-Tree paper's Table 3 (IID and non-IID, several seeds)")
    table3.add_argument("spec", nargs="?", default=str(Path(__file__).with_name("paper_table3.toml")))
    table3.add_argument("--seeds", type=int, default=3, help="seeds per setting (default 3)")
    table3.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    table3.add_argument("--out", type=_path, default=Path("results") / "paper_table3")
    table3.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep = commands.add_parser("sweep", help="run the product of grid settings x seeds; mean curves with 95%% CIs")
    sweep.add_argument("spec")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a spec key and its values, e.g. --grid data.alpha=0.1,1.0 (repeatable; adds to or replaces "
        "an axis of the spec's [sweep] grid)",
    )
    sweep.add_argument("--seeds", type=int, help="seeds per setting (default: the spec's [sweep] seeds, else 3)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sweep.add_argument("--jobs", type=int, default=None, help="parallel processes (default: one per core)")
    sweep.add_argument("--out", type=_path, help="sweep folder (default: results/<spec name>_sweep)")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.add_argument(
        "--reference",
        metavar="LABEL",
        help="protocol every other one is compared with, paired by seed (t-test and Wilcoxon p-values)",
    )
    sweep.add_argument(
        "--tune",
        action="append",
        default=[],
        metavar="train.KEY=V1,V2",
        help="first tune each setting's protocols over these values on its validation split (etree tune; "
        "default: the spec's [sweep.tune] grid); the setting's runs use what each protocol chose",
    )
    sweep.add_argument(
        "--tune-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override of the tuning runs only, e.g. rounds=10 (default: [sweep.tune] set)",
    )
    tune = commands.add_parser("tune", help="pick each protocol's training settings on the validation split")
    tune.add_argument("spec")
    tune.add_argument(
        "--grid", action="append", default=[], metavar="train.KEY=V1,V2", help="e.g. --grid train.lr=0.01,0.05,0.1"
    )
    tune.add_argument("--seeds", type=int, default=1, help="seeds per value (default 1)")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tune.add_argument("--out", type=Path, help="folder for tuned.toml and tune.md (default: results/<spec name>_tune)")
    tune.add_argument("--quiet", action="store_true", help="no progress bar")
    designer = commands.add_parser("design", help="search the tree (layers, K, ratios, clustering) for a spec's fleet")
    designer.add_argument("spec")
    designer.add_argument("--protocol", metavar="LABEL", help="the etree protocol to design (default: the first)")
    designer.add_argument("--objective", default="time", help="time | bytes (to --target) | accuracy (default time)")
    designer.add_argument(
        "--target", type=float, help="validation accuracy to reach (default: 90%% of the best baseline's final)"
    )
    designer.add_argument("--budget", default="20", help="trained trials (20) or training rounds in total (600r)")
    designer.add_argument("--seed", type=int, help="the search's seed (default: the spec's seed)")
    designer.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    designer.add_argument("--out", type=_path, help="folder for designed.toml, design.md, design.png")
    designer.add_argument("--quiet", action="store_true", help="no progress bar")
    plot = commands.add_parser("plot", help="redraw the plots and summary of a run folder from its files")
    plot.add_argument("run_dir", type=Path)
    listing = commands.add_parser("list", help="list what a spec can name, with each option's type and default")
    listing.add_argument("what", nargs="?", choices=LISTS, help="one kind (default: all)")
    listing.add_argument(
        "--plugins",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a plug-in module first, to list what it registers (repeatable)",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from experiments.api import resume, run
    from experiments.run_folder import prepare_target
    from experiments.spec import SpecError, load_spec

    if args.checkpoint_every < 0:
        raise SpecError(f"--checkpoint-every: got {args.checkpoint_every}; give a number of rounds >= 0 (0: never)")
    if args.resume is not None:
        if args.spec is not None or args.overrides or args.out is not None:
            raise SpecError("--resume: give only the run folder; the run continues with the spec saved in it")
        out = args.resume
        result = resume(out, progress=not args.quiet, checkpoint_every=args.checkpoint_every)
    else:
        spec = load_spec(args.spec or DEFAULT_SPEC, args.overrides)
        out = prepare_target(args.out or Path("results") / spec.name, "--out" if args.out else "name")
        result = run(spec, out=out, progress=not args.quiet, checkpoint_every=args.checkpoint_every)
    print(f"wrote {out}/ (metrics.csv, summary.md, convergence.png, spec.toml, tree.json)")
    print(result.summary())
    return 0


def _list(args: argparse.Namespace) -> int:
    """Every registered name of each kind with its options (``name: type = default``)."""
    from clients.classification.models import MODELS
    from clients.datasets import DATASETS
    from clients.partition import DATA_OPTIONS, PARTITIONERS
    from clients.recommendation.models import RECOMMENDERS
    from etree.core.registry import Registry
    from etree.protocols import PROTOCOLS, import_all
    from experiments.plugins import load_plugins
    from experiments.spec import DataSpec
    from topologies import TOPOLOGIES

    load_plugins(args.plugins, "--plugins")
    import_all()
    registries: dict[str, list[Registry[Any]]] = {
        "protocols": [PROTOCOLS],
        "models": [MODELS, RECOMMENDERS],
        "datasets": [DATASETS],
        "topologies": [TOPOLOGIES],
        "partitions": [PARTITIONERS],
    }
    for what in [args.what] if args.what else LISTS:
        print(f"{what} (spec field {registries[what][0].field}; options are keys beside it):")
        if what == "partitions":
            shared = ", ".join(f"{f.name} = {f.default!r}" for f in fields(DataSpec) if f.name in DATA_OPTIONS)
            print(f"  ([data] always gives {shared}, unless the spec sets them)")
        for registry in registries[what]:
            for name, options in registry.describe().items():
                kind = f"  [{registry.what}]" if len(registries[what]) > 1 else ""
                print(f"  {name}{kind}")
                print("".join(f"      {option}\n" for option in options) or "      (no options)\n", end="")
        print()
    return 0


def _plot(args: argparse.Namespace) -> int:
    from experiments.plots import plot_run
    from experiments.run_folder import RunFolderError, add_to_marker, atomic_write_text, read_marker
    from experiments.summary import summary_markdown
    from experiments.sweep_files import is_sweep
    from experiments.sweep_summary import summarise_sweep

    if not args.run_dir.is_dir():
        raise RunFolderError(f"run folder: '{args.run_dir}' not found; pass a folder written by 'etree run'")
    marker = read_marker(args.run_dir)
    if is_sweep(args.run_dir):
        if marker is None or marker["kind"] != "sweep":
            raise RunFolderError(
                f"run folder: '{args.run_dir}' has a sweep.json but no etree sweep marker; rerun the sweep"
            )
        written = summarise_sweep(args.run_dir)
        add_to_marker(args.run_dir, [path.name for path in written])
        print(f"wrote {', '.join(str(path) for path in written)}")
        return 0
    if marker is not None and marker["kind"] != "run":
        raise RunFolderError(f"run folder: '{args.run_dir}' holds an etree {marker['kind']} folder, not a run")
    summary = summary_markdown(args.run_dir)  # every file checked before anything is redrawn
    path = plot_run(args.run_dir)
    atomic_write_text(args.run_dir / "summary.md", summary)
    add_to_marker(args.run_dir, [path.name, "summary.md"])
    print(f"wrote {path} and {args.run_dir / 'summary.md'}")
    return 0


def _tree(args: argparse.Namespace) -> int:
    from experiments.run_folder import prepare_drawing, spec_sha256
    from experiments.runner import build_workload
    from experiments.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    if args.out is not None:  # before the tree is built; the default path is known once the protocol is
        prepare_drawing(args.out, spec_sha256(spec.to_dict()), "--out")
    workload, _, _ = build_workload(spec)
    try:
        return _show_tree(args, spec, workload)
    finally:
        workload.trainer.close()  # KMA pre-training may have started a Ray backend


def _show_tree(args: argparse.Namespace, spec: Spec, workload: Workload) -> int:
    """Print and draw the first tree of the spec's protocols (or ``--protocol``'s)."""
    from rich.console import Console

    from etree.protocols import make_protocol
    from experiments.run_folder import prepare_drawing, record_drawing, spec_sha256
    from experiments.runner import protocol_workload
    from experiments.spec import SpecError
    from experiments.tree_view import draw_tree, outline

    chosen = [p for p in spec.protocols if args.protocol in (None, p.label)]
    if not chosen:
        labels = ", ".join(p.label for p in spec.protocols)
        raise SpecError(f"--protocol: no protocol labelled {args.protocol!r}; the spec has: {labels}")
    for entry in chosen:
        protocol = make_protocol(entry.name, entry.label, dict(entry.options))
        protocol.setup(protocol_workload(workload, entry))  # its own train values: KMA pre-trains with them
        structure = protocol.structure()
        if (
            structure is None
            or "layers" not in structure
            or (args.protocol is None and len(structure["layers"][0]["clusters"]) < 2)
        ):
            continue
        out = args.out or Path("results") / spec.name / f"tree_{entry.label}.png"
        new_folder = prepare_drawing(out, spec_sha256(spec.to_dict()), "--out" if args.out else "name")
        out.parent.mkdir(parents=True, exist_ok=True)
        Console().print(outline(structure, entry.label))
        draw_tree(
            workload.graph,
            structure,
            out,
            title=f"{entry.label} tree over {spec.topology.kind} ({workload.devices} devices)",
        )
        record_drawing(out, spec_sha256(spec.to_dict()), new_folder)
        print(f"wrote {out}")
        return 0
    raise SpecError("protocols: no protocol in this spec builds a tree with clusters (use etree, grouped or hierfavg)")


def _tune(args: argparse.Namespace) -> int:
    from experiments.progress import BatchProgress
    from experiments.spec import load_spec
    from experiments.tune import tune

    out = args.out or Path("results") / f"{load_spec(args.spec, args.overrides).name}_tune"
    with BatchProgress("tune", enabled=not args.quiet) as progress:
        tune(Path(args.spec), out, grid=args.grid, seeds=args.seeds, overrides=args.overrides, on_done=progress.update)
    print((out / "tune.md").read_text())
    print(f"wrote {out / 'tuned.toml'} (run it with: etree run {out / 'tuned.toml'})")
    return 0


def _design(args: argparse.Namespace) -> int:
    from experiments.design import design
    from experiments.progress import BatchProgress
    from experiments.spec import load_spec

    out = args.out or Path("results") / f"{load_spec(args.spec, args.overrides).name}_design"
    with BatchProgress("design", enabled=not args.quiet) as progress:
        design(
            Path(args.spec),
            out,
            protocol=args.protocol,
            objective=args.objective,
            target=args.target,
            budget=args.budget,
            seed=args.seed,
            overrides=args.overrides,
            on_done=progress.update,
        )
    print((out / "design.md").read_text())
    print(f"wrote {out}/ (designed.toml, design.md, design.png; run it with: etree run {out / 'designed.toml'})")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from experiments.progress import BatchProgress
    from experiments.spec import load_spec
    from experiments.sweep import default_jobs, run_sweep

    spec = load_spec(args.spec, args.overrides)
    out = args.out or Path("results") / f"{spec.name}_sweep"
    with BatchProgress("sweep", enabled=not args.quiet) as progress:
        run_sweep(
            Path(args.spec),
            out,
            grid=args.grid,
            seeds=args.seeds,
            jobs=default_jobs() if args.jobs is None else args.jobs,
            base_overrides=args.overrides,
            on_done=lambda folder, done, total: progress.update(str(Path(folder).relative_to(out)), done, total),
            reference=args.reference,
            tune=args.tune,
            tune_overrides=args.tune_set,
        )
    print((out / "summary.md").read_text())
    return 0


def _table3(args: argparse.Namespace) -> int:
    from experiments.paper_table3 import run_table3
    from experiments.progress import BatchProgress
    from experiments.spec import SpecError

    if args.seeds < 1:
        raise SpecError(f"--seeds: got {args.seeds}; must be >= 1")
    with BatchProgress("table3", enabled=not args.quiet) as progress:
        run_table3(Path(args.spec), args.out, seeds=args.seeds, overrides=args.overrides, on_done=progress.update)
    print((args.out / "summary.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    commands = {
        "run": _run,
        "plot": _plot,
        "tree": _tree,
        "table3": _table3,
        "sweep": _sweep,
        "tune": _tune,
        "design": _design,
        "list": _list,
    }
    with terminate_as_interrupt():  # SIGTERM cleans up as Ctrl-C does
        try:
            args = _parser().parse_args(argv)
            return commands[args.command](args)
        except EtreeError as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"error: {message}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            line = (
                str(exc)
                if isinstance(exc, RunInterrupted)
                else "interrupted; nothing half-written is left, and runs that finished are kept"
            )
            print(line, file=sys.stderr)
            return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
