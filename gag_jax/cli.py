"""The ``gag-jax`` command (also ``python -m gag_jax``).

Sub-commands::

    gag-jax demo      real photos x EfficientNet-Lite0 x every method -> grid, overlays, table
    gag-jax explain   image files / folders -> overlay PNGs and .npy maps
    gag-jax evaluate  a case x methods x metrics -> table{1,2,3}.csv/.md (resumable)
    gag-jax tables    combine finished evaluate runs (several cases) into one table
    gag-jax port      a torch checkpoint -> Flax .msgpack
    gag-jax bench     the performance benchmarks (benchmarks/run.py)
    gag-jax sanity    model-randomisation sanity check (Adebayo et al. 2018) -> CSV + figures

Bad arguments and bad inputs (an unknown case, method or model, a missing directory or file, an
``--out`` that is a file, no readable image, labels that do not fit the images) print one line on
stderr and exit with status 2, and a refused run leaves no empty output folder behind; an
interrupted ``evaluate`` exits with 130 and resumes when run again; ``--debug`` shows full
tracebacks instead.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import warnings
from collections.abc import Sequence

from gag_jax.metrics import metric_names

PROG = "gag-jax"
EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A bad command-line argument: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``gag-jax evaluate: error: ... (see --help)``) and exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _comma_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _auto_or_positive_int(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _confidence(text: str) -> float | None:
    if text.lower() in ("none", "off", "all"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1) or 'none', got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1) or 'none', got {text!r}")
    return value


def _tables_arg(text: str) -> list[int]:
    try:
        tables = [int(t) for t in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1, 2, 3 or a list like 1,2,3, got {text!r}") from None
    if not tables or any(t not in (1, 2, 3) for t in tables):
        raise argparse.ArgumentTypeError(f"expected 1, 2, 3 or a list like 1,2,3, got {text!r}")
    return sorted(set(tables))


def _say(line: str) -> None:
    print(line, flush=True)


def _warn(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


class _OneLineWarnings(warnings.catch_warnings):
    """Show every warning raised inside as ``gag-jax: <message>`` on stderr (no source-line echo).

    The data loaders warn once per undecodable file ("skipping <path>: <reason>"); each such line
    names its file; a line already shown (a file read again in the second stage) is not repeated.
    TensorFlow's absence (the loader then reads the files directly) is not shown.
    """

    def __enter__(self):
        result = super().__enter__()
        warnings.simplefilter("always")
        shown: set[str] = set()

        def show(message, category, filename, lineno, file=None, line=None):
            text = str(message)
            if "TensorFlow is not installed" in text:
                return
            for part in text.splitlines():
                if part.strip() and part.strip() not in shown:
                    shown.add(part.strip())
                    _warn(part.strip())

        warnings.showwarning = show
        return result


@contextlib.contextmanager
def _compile_cache(directory: str | None):
    """Persist XLA executables between runs (a second ``demo`` skips most compilation) for the
    duration of one command, then put JAX's cache settings back.

    ``main`` is also called in-process (tests, notebooks): the process's JAX configuration is left as
    it was found, so a later, unrelated compilation never reads or writes this cache.
    """
    import jax

    if not directory or directory.lower() == "none" or jax.config.jax_compilation_cache_dir:
        yield  # no cache asked for, or the user configured their own: keep theirs
        return
    from jax.experimental.compilation_cache import compilation_cache

    previous_min_time = jax.config.jax_persistent_cache_min_compile_time_secs
    try:
        os.makedirs(directory, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except Exception as err:  # noqa: BLE001 - a cache is an optimisation only
        _warn(f"compilation cache disabled ({type(err).__name__}: {err})")
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous_min_time)
        compilation_cache.reset_cache()


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gag-jax", "xla")


def _method_names() -> tuple[str, ...]:
    """Every method the commands take by name: the method registry's (``gj.METHOD_RECORDS``)."""
    import gag_jax as gj

    return tuple(gj.METHOD_RECORDS)


def _check_methods(methods: Sequence[str]) -> list[str]:
    """The method names, with each ``module:attribute`` imported and registered under its attribute's name."""
    from gag_jax import user_code

    resolved = []
    for method in methods:
        if user_code.is_reference(method):
            try:
                method = user_code.user_method(method)
            except ValueError as err:
                raise UsageError(str(err)) from None
        resolved.append(method)
    names = _method_names()
    unknown = [m for m in resolved if m not in names]
    if unknown:
        raise UsageError(f"unknown method {unknown[0]!r}; expected one of {', '.join(names)} or module:attribute")
    return resolved


OUT_DIR_COMMANDS = ("demo", "explain", "evaluate", "tables", "sanity")
"""The commands whose ``--out`` is a folder."""


def _check_out_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out {path} is a file, not a folder: pass a folder (it is created if missing)")


def _check_readme(readme: str | None, section: str) -> None:
    """``--update-readme``: the file and its section markers, checked before anything is computed."""
    if not readme:
        return
    from gag_jax.experiments import readme as readme_sections

    try:
        readme_sections.check_section(readme, section)
    except FileNotFoundError:
        raise UsageError(f"--update-readme {readme}: no such file") from None
    except ValueError as err:
        raise UsageError(f"--update-readme {err}") from None


def _remove_empty_tree(path: str) -> None:
    """Remove ``path`` and its sub-folders if they hold no file at all (what a refused run left)."""
    if not os.path.isdir(path):
        return
    for root, _, _ in sorted(os.walk(path), key=lambda t: -len(t[0])):  # deepest first
        try:
            os.rmdir(root)  # only succeeds on an empty folder
        except OSError:
            continue


# ----------------------------------------------------------------------------- parser


# the flags several commands take, each declared once; a command adds it with _flag(p, name, **changes)
_FLAGS: dict[str, dict] = {
    "--out": {"required": True, "help": "output directory"},
    "--model": {"default": "efficientnet_lite0",
                "help": "resnet50, efficientnet_b0, efficientnet_lite0 (built-in weights), densenet161, vit_s16, "
                        "vit_b16, tiny, or module:attribute (a factory of yours returning a gj.ModelFunctions) "
                        "(default %(default)s)"},
    "--checkpoint": {"default": None, "help": "the model's weights: torch .pth / .pt, .npz (ViT) or .msgpack (not "
                                              "needed for efficientnet_lite0 or a module:attribute model)"},
    "--n": {"type": "positive_int", "default": None, "help": "modifications per method (default: 20, the paper's)"},
    "--seed": {"type": int, "default": 0, "help": "PRNG seed (default %(default)s)"},
    "--batch-size": {"type": "positive_int", "default": 8, "help": "images per explainer call (default %(default)s)"},
    "--chunk-size": {"type": "positive_int", "default": None,
                     "help": "modifications per vmapped chunk (memory; does not change results beyond rounding)"},
    "--metric-batch-size": {"type": "auto_or_positive_int", "default": "auto",
                            "help": "perturbed copies per model call in the metrics (default auto: chosen by "
                                    "measurement per backend, see gj.metrics)"},
    "--no-progress": {"action": "store_true", "help": "no progress bars"},
}


def _flag(p, name: str, **changes) -> None:
    """Add the shared flag ``name`` (:data:`_FLAGS`) to parser ``p``, with per-command ``changes``."""
    spec = {**_FLAGS[name], **changes}
    types = {"positive_int": _positive_int, "auto_or_positive_int": _auto_or_positive_int}
    if isinstance(spec.get("type"), str):
        spec["type"] = types[spec["type"]]
    if spec.get("required") and "default" in changes and "required" not in changes:
        spec.pop("required")  # a command that gives the flag a default does not require it
    p.add_argument(name, **spec)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every option documented in ``--help``)."""
    from gag_jax.data.loader import CASE_IMAGE_SIZES, CASES

    parser = _Parser(prog=PROG, description="Guided AbsoluteGrad and the gradient-saliency family in JAX: "
                     "explain images, evaluate with RCAP / DAUC / IAUC, reproduce the paper's tables.",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Run 'gag-jax demo' first: it needs no data and no download.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def common(p, *, cache=True):
        p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
        if cache:
            p.add_argument("--compile-cache", default=os.environ.get("GAG_JAX_COMPILE_CACHE", _default_cache_dir()),
                           metavar="DIR", help="persistent XLA compilation cache, so a second run skips most "
                           "compilation ('none' to disable; default $GAG_JAX_COMPILE_CACHE or %(default)s)")

    methods_help = ("comma-separated; the paper's vg, sg, vargrad, ig, guided_ig, blur_ig, gb, gradcam, ag, gag "
                    "and the perturbation methods occlusion, rise, xrai")

    # demo ---------------------------------------------------------------------------
    p = sub.add_parser("demo", help="explain real photos with the real EfficientNet-Lite0, every method",
                       description="Explain the photos shipped with scikit-image (cat, coffee, rocket, "
                       "motorcycle) with the real EfficientNet-Lite0 ImageNet weights for every method; "
                       "write a Figure-1-style grid, per-image overlays, an RCAP partition figure, the "
                       "Figure 4 propositions and a Markdown + CSV table of RCAP, DAUC and IAUC.")
    _flag(p, "--out", default="gag_demo", help="output directory (default %(default)s)")
    p.add_argument("--methods", type=_comma_list, default=None,
                   help=f"methods to run (default the paper's ten; {methods_help})")
    _flag(p, "--n", help="modifications per method (default: 20, the paper's, for its methods; occlusion, rise and "
          "xrai keep their own defaults unless --n is given)")
    p.add_argument("--size", type=_positive_int, default=160,
                   help="input side in pixels (default %(default)s: Lite0 classifies the photos well there and it "
                   "costs half of 224)")
    p.add_argument("--images", nargs="+", default=None, metavar="PATH",
                   help="your own image files / folders instead of the scikit-image photos")
    _flag(p, "--seed")
    _flag(p, "--batch-size", default=4)
    _flag(p, "--metric-batch-size")
    _flag(p, "--chunk-size")
    _flag(p, "--no-progress")
    p.add_argument("--update-readme", nargs="?", const="README.md", default=None, metavar="README",
                   help="afterwards, write demo_table.md into README (default ./README.md) between the "
                   "<!-- demo-table:start --> and <!-- demo-table:end --> comments")
    common(p)

    # explain ------------------------------------------------------------------------
    p = sub.add_parser("explain", help="image files or folders -> overlay PNGs and .npy maps",
                       description="Explain image files (or every image directly inside a folder). Writes "
                       "<image>_<method>.npy (float32 map in [0, 1]) and <image>_<method>.png (image | overlay | "
                       "heat map) per image and method, plus explain.csv (one row per image and method: label, "
                       "class, probability). An image that cannot be decoded is reported in one line and skipped; "
                       "the others are explained. An image much smaller than --size is upscaled, with a notice.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and / or folders")
    p.add_argument("--method", type=_comma_list, default=["gag"], help=f"method(s) (default gag; {methods_help})")
    _flag(p, "--model")
    _flag(p, "--checkpoint")
    p.add_argument("--labels", default="top-1",
                   help="'top-1' (the model's prediction, default), 'top-K' (e.g. top-5: a map for each of the "
                   "model's K most probable classes, from one call per batch; files <image>_top<r>_<class index>_"
                   "<class name>_<method>.npy/.png) or comma-separated class indices, one per image in sorted "
                   "reading order (or one for all)")
    p.add_argument("--size", type=_positive_int, default=224, help="input side in pixels (default %(default)s)")
    p.add_argument("--resize", choices=("center_crop", "squash"), default="center_crop",
                   help="how images are brought to --size (default %(default)s)")
    _flag(p, "--n")
    _flag(p, "--seed")
    _flag(p, "--batch-size")
    _flag(p, "--chunk-size")
    _flag(p, "--out", help="output directory (a second run into it adds its rows to explain.csv; a row of the same "
          "image and method is replaced)")
    _flag(p, "--no-progress")
    common(p)

    # evaluate -----------------------------------------------------------------------
    sizes = ", ".join(f"{c} {s}" for c, s in CASE_IMAGE_SIZES.items())
    p = sub.add_parser(
        "evaluate", help="case x methods x metrics -> the paper's tables (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a case x methods x metrics and write table<N>.csv / .md in the layout of the paper's "
        "Tables 1-3.\n\nStage 1 keeps the images classified with probability > --confidence on the explained class "
        "(--target: the label, or the model's top-1 class); stage 2 computes every method's maps and metrics batch by batch. Each finished (method, batch) is "
        "written to OUT/records at once; running the same command again resumes where it stopped without "
        "recomputing anything. OUT/manifest.json records every option, seed and version.\n\n"
        "Rows: --table 1: GAG-0, GAG-15, ..., GAG-85; --table 2: Grad-CAM, GAG, AG, VarGrad, SG, IG, GB, Guided IG, "
        "BlurIG, VG and the reversed SG_r, IG_r, GB_r, Guided IG_r, BlurIG_r; --table 3: the +, -, A, G, GA variants "
        "of SG, IG, Guided IG, BlurIG and GB divided by the original method and averaged.\n\n"
        "The synthetic case needs no data: with --model tiny (its default) a small CNN is trained for a few "
        "seconds on a separate synthetic draw and saved to OUT/tiny_model.msgpack (or to --checkpoint).")
    p.add_argument("--case", required=True, help=f"one of {', '.join(CASES)} (folder: any folder of images with a "
                   "labels.txt, class subfolders or no labels, and optional masks/)")
    p.add_argument("--data-dir", default=None, help="the dataset directory (not for synthetic)")
    _flag(p, "--model", default=None, help="a registered model (resnet50, efficientnet_b0, efficientnet_lite0, "
          "densenet161, vit_s16, vit_b16, tiny) or module:attribute (default: the paper's model of the case: "
          "imagenet_s resnet50, isic efficientnet_b0, places365 densenet161, synthetic tiny, folder efficientnet_lite0)")
    _flag(p, "--checkpoint", help="the model's weights (torch .pth / .pt, .npz or .msgpack); for tiny: loaded if it "
          "exists, else trained and written there")
    p.add_argument("--num-classes", type=_positive_int, default=None,
                   help="classifier outputs (default: inferred from the checkpoint)")
    p.add_argument("--table", type=_tables_arg, default=[2], help="1, 2, 3 or a list such as 1,2,3 (default 2)")
    p.add_argument("--methods", type=_comma_list, default=None,
                   help="rows to compute instead of the table's (e.g. gag,sg_r,gag-45,ig.guide_abs)")
    p.add_argument("--metrics", type=_comma_list, default=None,
                   help=f"comma-separated from {', '.join(metric_names())} (dice = log_cosh_dice), or "
                   "module:attribute for a metric of your own (default: rcap, dauc, iauc, plus log_cosh_dice and "
                   "mae when the case has masks)")
    _flag(p, "--batch-size", default=16, help="images per batch (default %(default)s)")
    _flag(p, "--metric-batch-size")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="use the first N examples only, in sorted file order (synthetic: how many images are "
                   "generated; default 64)")
    p.add_argument("--confidence", type=_confidence, default=0.9,
                   help="keep images with probability above this on the explained class (paper 0.9; "
                   "'none' keeps all; default %(default)s)")
    p.add_argument("--target", type=_target, default="auto",
                   help="the class each map explains: 'label' (the ground truth; unlabelled images are left "
                   "out), 'predicted' (the model's top-1 class; unlabelled images work), 'top-K' (e.g. top-5: "
                   "a map for each of the model's K most probable classes from one sweep, each (image, class) "
                   "pair scored as a row; images kept on the top-1 probability); default auto: label when the "
                   "data has labels, else predicted")
    p.add_argument("--resize", choices=("squash", "center_crop", "imagenet_eval"), default=None,
                   help="how images are brought to --image-size: squash (aspect ignored), center_crop (shorter "
                   "side to fit, centre cut out), imagenet_eval (shorter side to size / 0.875, centre cut out: "
                   "256 -> 224); default imagenet_eval for folder, squash (the paper's) for the others")
    p.add_argument("--image-size", type=_positive_int, default=None, help=f"input side (default per case: {sizes})")
    p.add_argument("--split", default=None, help="dataset split (default: the case's evaluation split)")
    _flag(p, "--n")
    _flag(p, "--chunk-size")
    _flag(p, "--seed", help="PRNG seed of the explanations and synthetic data (default %(default)s)")
    p.add_argument("--metric-option", action="append", default=[], metavar="METRIC.KEY=VALUE",
                   help="an option of one metric (its option group: dauc/iauc share deletion_insertion, the ROAD "
                   "orders road), e.g. max_sensitivity.samples=5 or pixel_flipping.features_in_step=1792; the "
                   "value is read as a Python literal (a number, a tuple, True) or else as a string; repeatable")
    p.add_argument("--case-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a loader option of the case (repeatable): imagenet_s: label_space=imagenet1k|imagenet_s, "
                   "synsets=FILE, mask_mode=class|foreground; isic: labels=diagnosis|melanoma|malignant; "
                   "synthetic: num_classes=1..5; folder: labels=FILE (default labels.txt), masks=DIR (default "
                   "masks), synsets=FILE")
    p.add_argument("--backend", choices=("auto", "tfds", "files"), default="auto",
                   help="read a prepared tensorflow-datasets copy (tfds) or the files directly (default auto)")
    p.add_argument("--train-steps", type=_positive_int, default=300,
                   help="model tiny only: optimisation steps when it is trained (default %(default)s)")
    _flag(p, "--out", help="results directory (reuse it to resume)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures (RCAP curves, p-ablation curve)")
    _flag(p, "--no-progress")
    hosts = p.add_argument_group("several hosts", "one process per host, the same command on each; --out must be "
                                 "a folder every host sees. Without these flags: JAX_COORDINATOR_ADDRESS, "
                                 "JAX_NUM_PROCESSES and JAX_PROCESS_ID, else a SLURM job or TPU pod slice is "
                                 "detected, else one process")
    hosts.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address and a free port")
    hosts.add_argument("--num-processes", type=_positive_int, default=None, metavar="N", help="processes in the job")
    hosts.add_argument("--process-id", type=int, default=None, metavar="I", help="this process, 0 .. N-1")
    hosts.add_argument("--host-timeout", type=_positive_int, default=300, metavar="SECONDS",
                       help="how long to wait for every process to connect, and for a silent one before it counts "
                       "as gone (default %(default)s)")
    common(p)

    # tables -------------------------------------------------------------------------
    p = sub.add_parser("tables", help="combine evaluate runs of several cases into one table",
                       description="Read finished 'evaluate' output directories (one per case) and write "
                       "table<N>.csv / .md with one column group per case, as in the paper.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="evaluate output directories")
    p.add_argument("--table", type=_tables_arg, default=[2], help="1, 2, 3 or a list (default 2)")
    _flag(p, "--out")
    p.add_argument("--update-readme", nargs="?", const="README.md", default=None, metavar="README",
                   help="also write the run's summary (date, machine, images kept, compute time, command) and the "
                   "tables into README (default README.md) between <!-- SECTION:start --> and <!-- SECTION:end -->")
    p.add_argument("--section", default="evaluate-tables", help="the README section name (default evaluate-tables)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")

    # port ---------------------------------------------------------------------------
    p = sub.add_parser("port", help="convert a torch checkpoint to Flax .msgpack",
                       description="Convert a PyTorch checkpoint (state_dict) of a supported model to a Flax "
                       ".msgpack file, checking every key and shape (needs torch).")
    p.add_argument("checkpoint", metavar="TORCH_CKPT", help="torch .pth / .pth.tar / .pt file")
    _flag(p, "--model", required=True, help="the architecture: a registered model with a torch "
          "counterpart (resnet50, efficientnet_b0, efficientnet_lite0, densenet161, vit_s16, vit_b16)")
    p.add_argument("--num-classes", type=_positive_int, default=None, help="default: inferred from the checkpoint")
    _flag(p, "--out", help="destination .msgpack file")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")

    # bench --------------------------------------------------------------------------
    p = sub.add_parser("bench", help="run the performance benchmarks (benchmarks/run.py)", add_help=False,
                       description="Everything after 'bench' is passed to benchmarks.run:main; "
                       "'gag-jax bench --help' shows its options.")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for benchmarks/run.py")
    _add_sanity_parser(sub, common)
    return parser


# ----------------------------------------------------------------------------- commands


def cmd_demo(args) -> int:
    """``gag-jax demo``."""
    import gag_jax as gj
    from gag_jax.experiments.demo import DEMO_N, run_demo, update_readme
    from gag_jax.experiments.jobs import BadInputError, Job
    from gag_jax.experiments.modelzoo import InputTooSmallError

    methods = _check_methods(args.methods or list(gj.METHODS))
    if args.images:
        _check_paths(args.images)
    _check_readme(args.update_readme, "demo-table")
    _say(f"gag-jax demo: EfficientNet-Lite0 (real ImageNet weights), {len(methods)} method(s), "
         f"n = {args.n or DEMO_N}, {args.size}x{args.size}")
    try:
        result = run_demo(Job.from_args(args, methods=methods), size=args.size, images=args.images, report=_say,
                          warn=_warn)
    except (InputTooSmallError, BadInputError) as err:
        raise UsageError(str(err)) from None
    _say("")
    with open(result.files["table_md"], encoding="utf-8") as f:
        _say(f.read().rstrip())
    _say("")
    _say(f"Wrote (in {result.seconds['total']:.0f} s):")
    for label, key in (("method grid (Figure 1 style)", "grid"), ("table (Markdown)", "table_md"),
                       ("table (CSV)", "table_csv"), ("per-image scores (CSV)", "per_image_csv"),
                       ("overlays, one per image and method", "overlays"),
                       ("RCAP partitions (Figure 3 style)", "rcap_partitions"),
                       ("synthetic propositions (Figure 4)", "propositions"), ("all maps (npz)", "maps")):
        _say(f"  {label:38s} {result.files[key]}")
    if args.update_readme:
        update_readme(args.update_readme, result.files["table_md"])
        _say(f"  {'the table, into':38s} {args.update_readme}")
    return 0


def _check_paths(paths: Sequence[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"no such image file or folder: {path}")


def _parse_labels(text: str) -> list[int] | None:
    if text.strip().lower() in ("top-1", "top1", "pred", "predicted"):
        return None
    try:
        return [int(t) for t in _comma_list(text)]
    except ValueError:
        raise UsageError(f"--labels must be 'top-1' or comma-separated class indices, got {text!r}") from None


def _target(text: str) -> str:
    """``--target``: auto, label, predicted or top-K (K >= 1; ``top5`` is read as ``top-5``)."""
    from gag_jax.experiments.records import parse_top_k

    value = text.strip().lower()
    if value in ("auto", "label", "predicted"):
        return value
    try:
        count = parse_top_k(value)
    except ValueError:
        count = None
    if count is None:
        raise argparse.ArgumentTypeError(f"must be 'auto', 'label', 'predicted' or 'top-K' with K >= 1 (e.g. "
                                         f"top-5); got {text!r}")
    return f"top-{count}"


def _parse_top_k(text: str) -> int | None:
    """K of ``--labels top-K`` for K >= 2 (``top-1`` is the default single map); None otherwise."""
    from gag_jax.experiments.records import parse_top_k

    try:
        k = parse_top_k(text)
    except ValueError:
        raise UsageError(f"--labels must be 'top-1', 'top-K' (e.g. top-5) or comma-separated class indices, "
                         f"got {text!r}") from None
    return None if k in (None, 1) else k


def cmd_explain(args) -> int:
    """``gag-jax explain``."""
    from gag_jax.experiments.explain_command import run_explain
    from gag_jax.experiments.jobs import BadInputError, Job
    from gag_jax.experiments.modelzoo import InputTooSmallError

    args.method = _check_methods(args.method)
    _check_model(args.model, args.checkpoint)
    _check_paths(args.paths)
    top_k = _parse_top_k(args.labels)
    labels = None if top_k is not None else _parse_labels(args.labels)
    try:
        result = run_explain(Job.from_args(args, methods=args.method), args.paths, labels=labels, size=args.size,
                             resize_mode=args.resize, report=_warn, notice=_warn, top_k=top_k)
    except (InputTooSmallError, BadInputError) as err:
        raise UsageError(str(err)) from None
    if not result["images"]:
        raise UsageError("no readable image to explain (each unreadable file is named above); nothing written")
    skipped = len(result["skipped"])
    _say(f"explained {len(result['images'])} image(s) with {', '.join(args.method)}"
         + (f"; skipped {skipped} unreadable file(s) (named above)" if skipped else ""))
    _say(f"wrote {len(result['written'])} files to {args.out} (<image>_<method>.npy / .png; explain.csv: "
         f"{result['rows']} row(s), one per image and method)")
    return 0


def _check_model(name: str, checkpoint: str | None) -> None:
    """``modelzoo.check_model`` as a usage error."""
    from gag_jax.experiments.modelzoo import check_model

    try:
        check_model(name, checkpoint)
    except ValueError as err:
        raise UsageError(str(err)) from None


def cmd_evaluate(args) -> int:
    """``gag-jax evaluate``: ``runner.evaluate_case`` with the command-line options, on every process
    of a multi-host job (``experiments.hosts``: flags, JAX_* variables, SLURM / TPU pod detection)."""
    from gag_jax.experiments import hosts

    try:
        job = hosts.resolve(args.coordinator, args.num_processes, args.process_id)
    except ValueError as err:
        raise UsageError(str(err)) from None
    with hosts.session(job, timeout=args.host_timeout, prefix=f"{PROG} evaluate"):
        return _evaluate(args)


def _evaluate(args) -> int:
    """The evaluate command on this process (process 0 alone prints the tables)."""
    from gag_jax.data import DatasetLayoutError
    from gag_jax.experiments import hosts, runner
    from gag_jax.experiments.jobs import Job

    try:
        with _OneLineWarnings():
            out = runner.evaluate_case(
                Job.from_args(args), args.case, data_dir=args.data_dir, num_classes=args.num_classes,
                tables=args.table, metrics=args.metrics, limit=args.limit, confidence=args.confidence,
                image_size=args.image_size, split=args.split, case_options=_case_options(args.case_option),
                metric_options=_metric_options(args.metric_option),
                backend=args.backend, resize=args.resize, target=args.target, train_steps=args.train_steps,
                figures=not args.no_figures, report=_say, command=shlex.join([PROG, *args.argv]))
    except (runner.OptionError, runner.RunMismatchError, DatasetLayoutError) as err:
        raise UsageError(str(err)) from None
    except KeyboardInterrupt:
        hosts.fail("interrupted")
        _warn("interrupted; every finished batch is saved: run the same command again to resume")
        return EXIT_INTERRUPTED
    plan = out["plan"]
    if not hosts.is_main():
        _say(f"process {hosts.process_index()} of {hosts.process_count()}: done ({out['counts']['computed']} "
             "(method, batch) record(s) computed by all processes); process 0 writes the tables")
        return 0
    if plan.get("images_unlabelled"):
        _warn(f"{plan['images_unlabelled']} image(s) have no label and were left out; --target predicted "
              "explains the model's top-1 class instead")
    if plan["images_kept"] == 0:
        hint = ("Lower --confidence or check the labels / model." if args.confidence is not None
                else "Use --target predicted to explain the model's top-1 class.")
        _warn(f"no image passed the selection: {out['note']} The tables are empty. {hint}")
    for paths in out["tables"].values():
        _say("")
        _say(paths["markdown"].rstrip())
    _say("")
    counts = out["counts"]
    _say(f"{counts['computed']} (method, batch) record(s) computed, {counts['reused']} reused from an earlier run; "
         f"{plan['images_kept']} images x {len(out['specs'])} methods in {out['seconds']:.0f} s")
    if plan.get("skipped_files"):
        _say(f"skipped {len(plan['skipped_files'])} unreadable file(s), named above and in {out['manifest']}")
    written = [p for paths in out["tables"].values() for k, p in paths.items() if k in ("csv", "md", "ratios")]
    _say("wrote: " + ", ".join(written + out["figures"] + [out["manifest"]]))
    return 0


def _metric_options(items: Sequence[str]) -> dict[str, dict]:
    """``["max_sensitivity.samples=5"]`` -> ``{"max_sensitivity": {"samples": 5}}`` (values as Python literals)."""
    import ast

    options: dict[str, dict] = {}
    for item in items:
        target, sep, value = item.partition("=")
        metric, dot, key = target.strip().partition(".")
        if not sep or not dot or not metric or not key:
            raise UsageError(f"--metric-option expects METRIC.KEY=VALUE (e.g. max_sensitivity.samples=5), got {item!r}")
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = value.strip()
        options.setdefault(metric, {})[key] = parsed
    return options


def _case_options(items: Sequence[str]) -> dict:
    """``["labels=melanoma", "num_classes=3"]`` -> ``{"labels": "melanoma", "num_classes": 3}``."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--case-option expects KEY=VALUE, got {item!r}")
        value = value.strip()
        options[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
    return options


def cmd_tables(args) -> int:
    """``gag-jax tables``: one table from several finished evaluate runs (``tables.combine_runs``)."""
    from gag_jax.experiments import readme, tables

    _check_readme(args.update_readme, args.section)
    try:
        written = tables.combine_runs(args.runs, args.table, args.out)
        if args.update_readme:
            readme.replace_section(args.update_readme, args.section, tables.runs_markdown(args.runs, written))
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    for paths in written:
        _say(paths["markdown"].rstrip())
        _say(f"wrote {paths['csv']} and {paths['md']}")
    from gag_jax.experiments import figures, runner

    for run_dir in args.runs:  # each case's methods x metrics ranks, grouped by metric category
        run = runner.load_run(run_dir)
        plain = {s.name: s.label for s in run["specs"] if s.base is None}
        if len(run["metrics"]) >= 2 and len(plain) >= 2:
            path = figures.metric_summary(os.path.join(args.out, f"metric_ranks_{run['case']}.png"),
                                          {n: run["results"][n] for n in plain if n in run["results"]},
                                          run["metrics"], plain,
                                          title=f"{run['case']}: rank per metric (1 = best), grouped by category")
            _say(f"wrote {path}")
    if args.update_readme:
        _say(f"wrote the summary and tables into {args.update_readme} (section {args.section})")
    return 0


def cmd_port(args) -> int:
    """``gag-jax port``."""
    from gag_jax.models import TORCH_MODEL_NAMES, load, porter

    if args.model not in TORCH_MODEL_NAMES:
        raise UsageError(f"unknown model {args.model!r} for a torch checkpoint; valid names: "
                         f"{', '.join(TORCH_MODEL_NAMES)}")
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"{args.checkpoint}: no such file")
    if not args.out.endswith(".msgpack"):
        raise UsageError(f"--out must end with .msgpack, got {args.out}")
    try:
        module, variables = load(args.model, args.checkpoint, num_classes=args.num_classes)
    except porter.CheckpointMismatchError as err:  # a checkpoint of another architecture: a bad input
        raise UsageError(" ".join(str(err).split())) from None
    except ImportError as err:
        _warn(f"port: {' '.join(str(err).split())}")
        return EXIT_FAILURE
    porter.save_variables(variables, args.out)
    _say(f"wrote {args.out} ({args.model}, {module.num_classes} classes); load it with "
         f"models.load({args.model!r}, {args.out!r})")
    return 0


def cmd_bench(args) -> int:
    """``gag-jax bench``: run the source checkout's ``benchmarks/run.py`` (benchmarks are not installed)."""
    import pathlib

    checkout = pathlib.Path(__file__).resolve().parent.parent
    if not (checkout / "benchmarks" / "run.py").is_file():
        _warn("bench: the benchmarks are repository tools and this installation is not a source checkout "
              f"({checkout} has no benchmarks/run.py); clone the repository and run: python -m benchmarks.run")
        return EXIT_USAGE
    import subprocess

    # a separate process from the checkout: the installed package never imports the repository's tools
    return subprocess.call([sys.executable, "-m", "benchmarks.run", *args.bench_args], cwd=str(checkout))


def _add_sanity_parser(sub, common) -> None:
    """The ``sanity`` sub-command's arguments."""
    p = sub.add_parser(
        "sanity", help="model-randomisation sanity check (Adebayo et al. 2018) -> CSV + figures",
        description="Re-initialise the model's parameters block by block from the logits down (cascading, or one "
        "block at a time with --independent), re-explain the same images after each step and measure how similar "
        "each map stays to the trained model's map (Spearman of signed and absolute maps, SSIM, HOG). Writes "
        "sanity.csv (per image), sanity_summary.csv (means, verdict), sanity_curves.png and sanity_maps.png.")
    _flag(p, "--model")
    _flag(p, "--checkpoint")
    p.add_argument("--methods", type=_comma_list, default=None,
                   help="comma-separated gj.METHODS (default all ten)")
    p.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files and / or folders")
    p.add_argument("--max-images", type=_positive_int, default=4,
                   help="use the first N readable images in sorted order (default %(default)s)")
    p.add_argument("--labels", default="top-1",
                   help="'top-1' (the trained model's prediction, default) or comma-separated class indices")
    p.add_argument("--size", type=_positive_int, default=224, help="input side in pixels (default %(default)s)")
    _flag(p, "--n")
    p.add_argument("--independent", action="store_true", help="one block at a time instead of cascading")
    p.add_argument("--by", choices=("layer", "stage"), default="layer",
                   help="blocks: each top-level layer (default) or each named stage (layer1, denseblock2, ...)")
    p.add_argument("--steps", type=_comma_list, default=None,
                   help="only re-explain after these blocks (comma-separated labels; default every block)")
    _flag(p, "--seed")
    _flag(p, "--batch-size", default=None, help="images per explainer call (default all)")
    _flag(p, "--chunk-size")
    _flag(p, "--out")
    p.add_argument("--update-readme", nargs="?", const="README.md", default=None, metavar="README",
                   help="also write the summary table into README (default README.md) between "
                   "<!-- sanity-table:start --> and <!-- sanity-table:end -->")
    common(p)


def cmd_sanity(args) -> int:
    """``gag-jax sanity``: ``sanity_command.sanity_check`` with the command-line options."""
    import gag_jax as gj
    from gag_jax.experiments import readme
    from gag_jax.experiments.jobs import Job
    from gag_jax.experiments.sanity_command import sanity_check

    methods = _check_methods(args.methods or list(gj.METHODS))
    _check_model(args.model, args.checkpoint)
    _check_paths(args.images)
    _check_readme(args.update_readme, "sanity-table")
    test_options = {"by": args.by, "batch_size": args.batch_size, **({"steps": args.steps} if args.steps else {})}
    try:
        run = sanity_check(Job.from_args(args, methods=methods), args.images, labels=_parse_labels(args.labels),
                           max_images=args.max_images, size=args.size, cascading=not args.independent,
                           report=_say, warn=_warn, **test_options)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if run is None:
        raise UsageError("no readable image among --images (each unreadable file is named above); nothing written")
    _say("")
    with open(run["files"]["markdown"], encoding="utf-8") as f:
        _say(f.read().rstrip())
    if args.update_readme:
        readme.replace_section(args.update_readme, "sanity-table", run["markdown_with_command"])
        _say(f"wrote the summary into {args.update_readme} (section sanity-table)")
    _say("")
    for label, path in run["files"].items():
        _say(f"  {label:8s} {path}")
    return 0


COMMANDS = {"demo": cmd_demo, "explain": cmd_explain, "evaluate": cmd_evaluate, "tables": cmd_tables,
            "port": cmd_port, "bench": cmd_bench, "sanity": cmd_sanity}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gag-jax`` / ``python -m gag_jax``; returns the exit status.

    Args:
      argv: arguments without the program name (default ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:  # everything after 'bench' belongs to benchmarks/run.py
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.version:
        import gag_jax

        _say(f"gag-jax {gag_jax.__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    with _compile_cache(getattr(args, "compile_cache", None)):
        return _run_command(args, argv)


def _run_command(args: argparse.Namespace, argv: list[str]) -> int:
    """Run one parsed command; a refusal prints one line and returns its exit status."""
    debug = getattr(args, "debug", False)
    prefix = f"{PROG} {args.command}"
    out = getattr(args, "out", None) if args.command in OUT_DIR_COMMANDS else None
    new_out = bool(out) and not os.path.exists(out)  # a refused run removes it again if it stays empty
    try:
        args.argv = argv
        if out:
            _check_out_dir(out)
        return COMMANDS[args.command](args)
    except UsageError as err:
        if new_out:
            _remove_empty_tree(out)
        if debug:
            raise
        print(f"{prefix}: error: {err}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as err:
        if new_out:
            _remove_empty_tree(out)
        if debug:
            raise
        text = " ".join(str(err).split())  # one line
        print(f"{prefix}: error: {text} (--debug for the traceback)", file=sys.stderr, flush=True)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
