"""``tapeflow-train``: train an MLP or CNN on MNIST / Fashion-MNIST, alone or under mpiexec.

``--batch-size`` is the global batch: with N ranks each step's batch is split N ways, so the
result does not depend on N (up to float summation order). Progress and logs on rank 0 only.
Every mistake in the arguments, paths or a checkpoint to resume is reported before any
training as one line, ``tapeflow-train: error: ...``, with exit status 2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

from tapeflow.launch.cli import (
    HelpFormatter, Parser, Stopped, UsageError, check_writable_dir, check_writable_file, fail,
    finite_float, int_list, launcher_rank, launcher_size, nonnegative_int, plural, positive_int,
    signal_name, stop_on_signals,
)

PROG = "tapeflow-train"
EXAMPLES = """
examples:
  tapeflow-train --epochs 5                                 MLP on MNIST in this process
  tapeflow-train --model cnn --optimizer adam --lr 1e-3 --epochs 3
  tapeflow-train --np 2 --batch-size 256                    2 ranks (runs mpiexec for you)
  mpiexec -n 2 tapeflow-train --model cnn                   the same under your own mpiexec
  tapeflow-train --checkpoint-dir runs/a --metrics runs/a/metrics.jsonl
  tapeflow-train --checkpoint-dir runs/a --metrics runs/a/metrics.jsonl --resume --epochs 20
  tapeflow-train --checkpoint-dir runs/a --evaluate-only    test accuracy of the newest save
  tapeflow-plot runs/a/metrics.jsonl -o curves.png          draw the training curves
"""

OPTIMIZER_DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3,
                        "adagrad": 0.05, "adadelta": 1.0, "adamax": 2e-3, "nadam": 1e-3}
# --opt-arg settings with a valid range (Keras's): decay factors in [0, 1), positive epsilon.
_UNIT_INTERVAL = ("beta_1", "beta_2", "rho", "momentum", "ema_momentum")
_POSITIVE = ("epsilon", "clipnorm", "clipvalue", "global_clipnorm")
_NONNEGATIVE = ("weight_decay", "initial_accumulator_value")


def _opt_arg(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--opt-arg takes NAME=VALUE (e.g. beta_1=0.95), got "
                                         f"{text!r}")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--opt-arg {key}: value {value!r} is not a number"
                                         ) from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"--opt-arg {key}: value {value!r} is not finite")
    return key, number


def build_parser() -> argparse.ArgumentParser:
    from tapeflow import optimizers

    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1],
               epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="the network")
    p.add_argument("--hidden", type=int_list("--hidden"), default=(512, 512),
                   help="hidden layer widths of the MLP, comma-separated")
    p.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist",
                   help="the data set")
    p.add_argument("--data-dir", help="folder with the IDX files (else $TAPEFLOW_DATA_DIR, the "
                                      "user cache, then a verified download)")
    p.add_argument("--no-verify", action="store_true",
                   help="train on your own IDX files: skip the SHA-256 check of local files "
                        "against the canonical dataset (downloads are always verified)")
    p.add_argument("--no-download", action="store_true",
                   help="never download: fail with a message if the files are not found")
    p.add_argument("--optimizer", choices=sorted(optimizers.NAMES), default="sgd",
                   help="the update rule")
    p.add_argument("--lr", type=finite_float, default=None,
                   help="learning rate (default per optimizer: sgd 0.1, adam 1e-3, ...)")
    p.add_argument("--momentum", type=finite_float, default=None,
                   help="momentum for sgd/rmsprop, in [0, 1) (sgd default 0.9)")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    p.add_argument("--weight-decay", type=finite_float, default=None,
                   help="decoupled weight decay (>= 0)")
    p.add_argument("--opt-arg", type=_opt_arg, action="append", default=[], metavar="NAME=VALUE",
                   help="any other optimizer setting, e.g. --opt-arg beta_1=0.95")
    p.add_argument("--schedule", choices=("constant", "cosine", "exponential"),
                   default="constant", help="learning-rate schedule over the whole run")
    p.add_argument("--decay-rate", type=finite_float, default=0.5,
                   help="exponential schedule: factor per epoch (> 0)")
    p.add_argument("--warmup-steps", type=nonnegative_int, default=0,
                   help="linear warm-up steps")
    p.add_argument("--clip-norm", type=finite_float, default=None,
                   help="clip by global norm (> 0)")
    p.add_argument("--epochs", type=positive_int, default=10,
                   help="train until this many epochs are complete (a resumed run counts "
                        "the restored ones)")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="GLOBAL batch size (split across ranks; at least the number of ranks)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    p.add_argument("--checkpoint-dir", help="save checkpoints here (each epoch and on "
                                            "SIGINT/SIGTERM/SIGHUP); created if missing")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="N",
                   help="also save every N steps")
    p.add_argument("--keep", type=positive_int, default=3, metavar="N",
                   help="checkpoints to keep (the newest good ones)")
    p.add_argument("--resume", nargs="?", const="require", choices=("require", "auto"),
                   default=None, help="continue from the newest good checkpoint in "
                   "--checkpoint-dir; an error if there is none, unless --resume auto")
    p.add_argument("--evaluate-only", action="store_true",
                   help="evaluate the newest checkpoint in --checkpoint-dir on the test split "
                        "and exit (no training)")
    p.add_argument("--metrics", metavar="FILE",
                   help="append JSON-lines metrics to this file (see tapeflow-plot)")
    p.add_argument("--log-every", type=positive_int, default=50, metavar="N",
                   help="write a metrics line and refresh the progress figures every N steps")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="where the arrays live (gpu needs CuPy)")
    p.add_argument("--train-limit", type=positive_int, default=None, metavar="N",
                   help="use only the first N training images (quick runs)")
    p.add_argument("--test-limit", type=positive_int, default=None, metavar="N",
                   help="use only the first N test images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--np", type=positive_int, default=None, dest="np_ranks", metavar="N",
                   help="launch N ranks with mpiexec (same flags otherwise)")
    p.add_argument("--oversubscribe", action="store_true",
                   help="with --np: allow more ranks than cores (they time-share the cores)")
    p.add_argument("--max-restarts", type=int, default=0, metavar="K",
                   help="with --np and --checkpoint-dir: when a rank dies, end the job and "
                        "start it again from the newest good checkpoint, up to K times")
    p.add_argument("--eager", action="store_true",
                   help="run each step eagerly instead of through tp.function (for debugging; "
                        "the same losses either way). Several ranks always step eagerly")
    p.add_argument("--timeline", metavar="FILE",
                   help="write a Chrome-trace timeline of each step's phases (one file per "
                        "rank: FILE, or FILE's stem + .rankR.json on several ranks); open it "
                        "in Perfetto or chrome://tracing")
    return p


def run_config(args: argparse.Namespace) -> dict:
    """What a checkpoint must share with this run to be resumed (stored in each checkpoint)."""
    return {"model": args.model, "hidden": list(args.hidden) if args.model == "mlp" else None,
            "dataset": args.dataset, "optimizer": args.optimizer,
            "train_limit": args.train_limit}


_FLAG_OF = {"seed": "--seed", "batch_size": "--batch-size", "model": "--model",
            "hidden": "--hidden", "dataset": "--dataset", "optimizer": "--optimizer",
            "train_limit": "--train-limit"}


def _show(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "(all)" if value is None else str(value)


def _build_model(args: argparse.Namespace, inputs: int = 784):
    import tapeflow as tp

    if args.model == "mlp":
        return tp.nn.mlp([inputs, *args.hidden, 10], seed=args.seed)
    return tp.nn.mnist_cnn(seed=args.seed)


def _check_resume(args: argparse.Namespace) -> None:
    """The checkpoint ``--resume``/``--evaluate-only`` would use exists and fits this run."""
    from tapeflow import checkpoint as ckpt

    manifest, path, problems = None, None, []
    for candidate in reversed(ckpt.list_checkpoints(args.checkpoint_dir)):
        try:  # fully verified (tensor file too), as the restore will; every rank decides alike
            ckpt.load(candidate)
            manifest, path = ckpt.read_manifest(candidate), candidate
            break
        except ckpt.CheckpointError as e:
            problems.append(str(e))
    if manifest is None:
        if args.resume == "auto" and not args.evaluate_only:
            return
        why = f" ({len(problems)} damaged: {problems[0]})" if problems else ""
        flag = "--evaluate-only" if args.evaluate_only else "--resume"
        raise UsageError(f"{flag}: no usable checkpoint in {args.checkpoint_dir}{why}; "
                         + ("train first" if args.evaluate_only else
                            "use --resume auto to start from scratch when there is none"))
    extra = manifest.get("extra") or {}
    saved = {"seed": extra.get("seed"), "batch_size": extra.get("batch_size"),
             **(extra.get("config") or {})}
    mine = {"seed": args.seed, "batch_size": args.batch_size, **run_config(args)}
    for key, value in mine.items():
        if key in saved and saved[key] != value and not (args.evaluate_only and key in (
                "seed", "batch_size", "optimizer", "train_limit")):
            flag = _FLAG_OF[key]
            raise UsageError(f"checkpoint {path} was trained with {flag} {_show(saved[key])}, "
                             f"this run has {flag} {_show(value)}: use the same {flag}, or "
                             "another --checkpoint-dir to start a new run")
    # Checkpoints without a stored config: compare the variables' shapes.
    shapes = {k[len("model/"):]: tuple(v.get("shape", ())) for k, v in
              manifest["tensors"].items() if k.startswith("model/")}
    for name, var in _build_model(args).named_variables():
        if shapes.get(name) != tuple(var.shape):
            raise UsageError(f"checkpoint {path} holds a different model (variable {name}: "
                             f"{shapes.get(name)} there, {tuple(var.shape)} for this "
                             "--model/--hidden): use the same model flags, or another "
                             "--checkpoint-dir")


def validate(args: argparse.Namespace) -> None:
    """Every check that needs no data and no MPI; raises :class:`UsageError` (one line)."""
    from tapeflow.distributed import launcher

    if (args.resume or args.evaluate_only) and not args.checkpoint_dir:
        flag = "--evaluate-only" if args.evaluate_only else "--resume"
        raise UsageError(f"{flag} needs --checkpoint-dir DIR (where to look for checkpoints)")
    if args.np_ranks is not None and launcher.inside_mpi_job():
        raise UsageError("--np starts its own mpiexec job and cannot run inside one: drop "
                         "--np (mpiexec -n N already chose the number of ranks)")
    if args.np_ranks is not None and args.np_ranks > launcher.cpu_count() \
            and not args.oversubscribe:
        raise UsageError(f"--np {args.np_ranks} is more ranks than the {launcher.cpu_count()} "
                         f"cores here; use --np {launcher.cpu_count()}, or add --oversubscribe "
                         "to time-share the cores (slower)")
    ranks = args.np_ranks or launcher_size()
    if args.batch_size < ranks:
        raise UsageError(f"--batch-size {args.batch_size} is the global batch and must be at "
                         f"least the number of ranks ({ranks})")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir {args.data_dir} is not a directory: create it and put "
                         "the four IDX files there (train-images-idx3-ubyte.gz, "
                         "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                         "t10k-labels-idx1-ubyte.gz), or leave out --data-dir to use the cache "
                         "and a verified download")
    for flag, value, ok, rule in (
            ("--lr", args.lr, lambda v: v > 0, "positive"),
            ("--clip-norm", args.clip_norm, lambda v: v > 0, "positive"),
            ("--momentum", args.momentum, lambda v: 0 <= v < 1, "in [0, 1)"),
            ("--weight-decay", args.weight_decay, lambda v: v >= 0, ">= 0"),
            ("--decay-rate", args.decay_rate, lambda v: v > 0, "positive")):
        if value is not None and not ok(value):
            raise UsageError(f"{flag} must be {rule}, got {value}")
    for key, value in args.opt_arg:
        if key in _UNIT_INTERVAL and not 0 <= value < 1:
            raise UsageError(f"--opt-arg {key} must be in [0, 1), got {value}")
        if (key in _POSITIVE and value <= 0) or (key in _NONNEGATIVE and value < 0):
            rule = "positive" if key in _POSITIVE else ">= 0"
            raise UsageError(f"--opt-arg {key} must be {rule}, got {value}")
        if key == "learning_rate":
            raise UsageError("--opt-arg learning_rate: use --lr")
    if args.momentum is not None and args.optimizer not in ("sgd", "rmsprop"):
        raise UsageError(f"--momentum applies to sgd and rmsprop, not {args.optimizer}; use "
                         "--opt-arg NAME=VALUE for other settings")
    if args.nesterov and args.optimizer != "sgd":
        raise UsageError("--nesterov applies to --optimizer sgd only")
    try:  # a trial build: a bad --opt-arg name or value fails now, not after loading the data
        make_optimizer(args, steps_per_epoch=1)
    except ValueError as e:
        raise UsageError(str(e) if str(e).startswith("bad --opt-arg") else
                         f"optimizer settings: {e}") from None
    if args.metrics:
        check_writable_file(args.metrics, "--metrics")
    if args.timeline:
        check_writable_file(args.timeline, "--timeline")
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts must be >= 0, got {args.max_restarts}")
    if args.max_restarts and (not args.np_ranks or not args.checkpoint_dir):
        raise UsageError("--max-restarts needs --np N (this command launches and relaunches "
                         "the job) and --checkpoint-dir DIR (where a restart resumes from)")
    if args.checkpoint_dir:
        check_writable_dir(args.checkpoint_dir, "--checkpoint-dir")
        # Probed by the launcher or a single process only: the ranks of one job would take
        # the probe lock from each other (rank 0 then fails alone while rank 1 waits in MPI
        # start-up). In a job, rank 0 takes the lock and a refusal reaches every rank.
        if (os.path.isdir(args.checkpoint_dir) and not args.evaluate_only
                and launcher_size() == 1):
            from tapeflow import checkpoint as ckpt

            try:  # another job training into this directory right now
                ckpt.DirectoryLock(args.checkpoint_dir).acquire().release()
            except ckpt.CheckpointError as e:
                raise UsageError(f"--checkpoint-dir {e}") from None
    if args.resume or args.evaluate_only:
        _check_resume(args)
    if args.device == "gpu":
        from tapeflow._backend import cupy_or_none

        if cupy_or_none() is None:
            raise UsageError("--device gpu needs CuPy and a visible GPU: pip install "
                             "'tapeflow[gpu]', or use --device cpu")


def place_on_gpu(model, local_rank: int):
    """Move ``model`` to this rank's GPU (``local_rank`` modulo the GPUs visible), make it the
    current device, and return the explicit copy that puts each batch there."""
    from tapeflow import devices

    gpu = devices.gpu_module()
    spec = devices.DeviceSpec("GPU", local_rank % max(gpu.cuda.runtime.getDeviceCount(), 1))
    gpu.cuda.Device(spec.index).use()
    model.to(spec)
    return lambda a: devices.to_device(a, spec)


def make_optimizer(args: argparse.Namespace, steps_per_epoch: int):
    from tapeflow import optimizers
    from tapeflow.optimizers import schedules

    lr = args.lr if args.lr is not None else OPTIMIZER_DEFAULT_LR[args.optimizer]
    total = steps_per_epoch * args.epochs
    if args.schedule == "cosine":
        lr = schedules.CosineDecay(lr, decay_steps=max(total - args.warmup_steps, 1))
    elif args.schedule == "exponential":
        lr = schedules.ExponentialDecay(lr, decay_steps=steps_per_epoch,
                                        decay_rate=args.decay_rate)
    if args.warmup_steps:
        lr = schedules.LinearWarmup(lr, warmup_steps=args.warmup_steps)
    kwargs = dict(args.opt_arg)
    if args.optimizer == "sgd":
        kwargs.setdefault("momentum", 0.9 if args.momentum is None else args.momentum)
        kwargs["nesterov"] = args.nesterov
    elif args.momentum is not None:
        kwargs["momentum"] = args.momentum
    if args.weight_decay is not None:
        kwargs["weight_decay"] = args.weight_decay
    if args.clip_norm is not None:
        kwargs["global_clipnorm"] = args.clip_norm
    try:
        return optimizers.get(args.optimizer, learning_rate=lr, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad --opt-arg for {args.optimizer}: {e}") from None


def load_data(args: argparse.Namespace, comm=None):
    """(x_train, y_train, x_test, y_test), normalized. Under MPI the first rank of each node
    reads, verifies and normalizes the files once and the node's ranks share that copy
    (:mod:`tapeflow.launch.node_data`); a data error is a DatasetError on every rank."""
    import numpy as np

    from tapeflow import data

    from .node_data import load_on_node

    def load():
        loader = data.load_mnist if args.dataset == "mnist" else data.load_fashion_mnist
        splits = loader(args.data_dir, verify=not args.no_verify, download=not args.no_download)
        flat = args.model == "mlp"
        xtr = data.normalize(splits.train_images[:args.train_limit], flatten=flat)
        xte = data.normalize(splits.test_images[:args.test_limit], flatten=flat)
        if not flat:
            xtr, xte = xtr[..., None], xte[..., None]
        return (xtr, splits.train_labels[:args.train_limit].astype(np.int64),
                xte, splits.test_labels[:args.test_limit].astype(np.int64))

    return load_on_node(load, comm, count=4) if comm is not None else load()


# Each rank started by --np records SIGINT/SIGTERM/SIGHUP from its first instruction on (the
# launcher forwards them), so a signal that arrives while Python imports tapeflow still ends
# the rank with one line and 128 + signal, not a traceback or an mpiexec banner.
_RANK_BOOTSTRAP = (
    "import signal, sys\n"
    "pending = []\n"
    "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n"
    "    signal.signal(s, lambda signum, frame: pending.append(signum))\n"
    "from tapeflow.launch.train import main\n"
    "sys.exit(main(sys.argv[1:], pending=pending))\n")


def _mpi_relaunch(args: argparse.Namespace, argv: list[str]) -> int:
    from tapeflow.distributed import launcher

    from . import elastic

    rest, skip = [], False
    for a in argv:  # drop --np N / --np=N: the ranks must not relaunch themselves
        if skip:
            skip = False
        elif a in ("--np", "--max-restarts"):
            skip = True
        elif not a.startswith(("--np=", "--max-restarts=")) and a != "--oversubscribe":
            rest.append(a)
    cmd = [sys.executable, "-c", _RANK_BOOTSTRAP, *rest]

    def launch(command: list[str]) -> tuple[int, bool]:
        code = launcher.run_mpiexec(args.np_ranks, command, oversubscribe=args.oversubscribe)
        return code, code in elastic.USER_STOP

    try:
        if not args.max_restarts:
            return launch(cmd)[0]
        return elastic.run_elastic(cmd, args.max_restarts, launch, prog=PROG)
    except FileNotFoundError as e:
        fail(PROG, str(e))


def _blas_threads() -> str:
    """The BLAS pool size in effect (after dist.init's per-rank cap), for the log line."""
    from threadpoolctl import threadpool_info

    sizes = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
    return ",".join(map(str, sizes)) or "unknown"


def main(argv: list[str] | None = None, pending: list[int] | None = None) -> int:
    """Entry point: ``tapeflow-train [options]``; returns the exit status.

    SIGINT/SIGTERM/SIGHUP before training starts end the run with one line and status
    128 + signal; during training the loop saves a checkpoint first.
    """
    import signal
    import threading

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM,
                                                     signal.SIGHUP)}
        stop_on_signals()
    try:
        if pending:  # recorded by _RANK_BOOTSTRAP before this function ran
            raise Stopped(pending[0])
        return _main(sys.argv[1:] if argv is None else list(argv))
    except Stopped as e:
        if launcher_rank() == 0:
            sys.stdout.flush()
            print(f"{PROG}: stopped by {e.name} before training started", file=sys.stderr)
        if _job.comm is not None and _job.comm.size > 1:
            # Every rank got the signal (mpiexec forwards it) at some point of the set-up; a
            # collective close could pair with another rank's broadcast, so leave at once.
            sys.stderr.flush()
            os._exit(128 + e.signum)
        return 128 + e.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _Job:
    """The communicator once MPI is up (read by main's signal path)."""

    comm = None


_job = _Job()


def _agreed_exit(comm, status: int, message: str | None = None) -> int:
    """Leave with ``status`` on every rank at once (all ranks reached the same decision through
    a collective): the communicator is closed first, so the job ends with that status and no
    abort banner. ``message`` is printed as a one-line error (status 2)."""
    comm.close()
    _job.comm = None
    if message is not None:
        fail(PROG, message)
    return status


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate(args)
    except UsageError as e:
        fail(PROG, str(e))
    if args.np_ranks and args.np_ranks > 1:
        return _mpi_relaunch(args, argv)

    import tapeflow as tp
    from tapeflow import checkpoint as ckpt
    from tapeflow import distributed as dist
    from tapeflow.training import Interrupted, Trainer

    if args.timeline:
        os.environ["TAPEFLOW_TIMELINE"] = args.timeline  # dist.init starts it on each rank
    comm = _job.comm = dist.init("auto")  # a failure on any rank now ends the whole job
    tp.random.set_seed(args.seed)
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    try:
        xtr, ytr, xte, yte = load_data(args, comm)
    except tp.data.DatasetError as e:
        hint = ""
        if ("SHA-256 mismatch" in str(e) or "not the canonical file" in str(e)) \
                and not args.no_verify:
            hint = " (training on your own IDX files? add --no-verify)"
        return _agreed_exit(comm, 2, f"cannot load {args.dataset}: {e}{hint}")
    model = _build_model(args, inputs=xtr.shape[1] if args.model == "mlp" else 784)
    to_device = lambda a: a  # noqa: E731
    if args.device == "gpu":
        to_device = place_on_gpu(model, comm.local_rank)
    steps = -(-len(xtr) // args.batch_size)
    optimizer = make_optimizer(args, steps)
    trainer = Trainer(model, optimizer, xtr, ytr, xte, yte, batch_size=args.batch_size,
                      seed=args.seed, comm=comm, gradient_tape=dist.tape_factory(comm),
                      checkpoint_dir=args.checkpoint_dir, keep_checkpoints=args.keep,
                      checkpoint_every=args.checkpoint_every, metrics_path=args.metrics,
                      log_every=args.log_every, progress=not args.no_progress, log=say,
                      to_device=to_device, config=run_config(args),
                      # (tp.function plans are NumPy kernels today: a GPU step runs eagerly)
                      use_function=not args.eager and args.device == "cpu")
    dist.broadcast_variables(model.variables, root=0, comm=comm)
    try:
        with warnings.catch_warnings(record=True) as skipped:
            warnings.simplefilter("always")
            restored = bool(args.resume or args.evaluate_only) and trainer.restore(
                weights_only=args.evaluate_only)
        for w in skipped:  # a damaged newer checkpoint passed over: one line each
            say(f"{PROG}: warning: {w.message}", file=sys.stderr)
    except ckpt.CheckpointError as e:
        return _agreed_exit(comm, 2, f"cannot resume: {e}")
    if args.evaluate_only:
        trainer.close()
        if not restored:
            return _agreed_exit(comm, 2, f"--evaluate-only: no usable checkpoint in "
                                         f"{args.checkpoint_dir}")
        loss, accuracy = trainer.evaluate(xte, yte)
        say(f"{args.model} in {trainer.restored_path} at step {trainer.step} (epoch "
            f"{trainer.epoch}): test accuracy "
            f"{accuracy:.4f}, test loss {loss:.4f} on {plural(len(xte), 'image')}")
        return 0
    if args.resume == "require" and not restored:
        return _agreed_exit(comm, 2, f"--resume: no usable checkpoint in {args.checkpoint_dir} "
                                     "(all damaged?); use --resume auto to start from scratch "
                                     "when there is none")
    if args.resume == "auto" and not restored:
        say(f"no checkpoint in {args.checkpoint_dir}: starting from scratch")
    n_params = sum(int(v.size) for v in model.trainable_variables)
    lr = args.lr if args.lr is not None else OPTIMIZER_DEFAULT_LR[args.optimizer]
    say(f"{PROG}: {args.model} ({n_params:,} parameters) on {args.dataset} "
        f"({len(xtr):,} train / {len(xte):,} test), {plural(comm.size, 'rank')}, global batch "
        f"{args.batch_size}, {args.optimizer} lr {lr}, {plural(args.epochs, 'epoch')}, "
        f"BLAS threads {_blas_threads()}")
    try:
        results = trainer.fit(args.epochs)
    except Interrupted as e:
        say(f"interrupted at step {trainer.step} by {signal_name(e.signum)}: checkpoint saved "
            f"to {e.checkpoint}")
        return _agreed_exit(comm, 128 + e.signum)
    except ckpt.CheckpointError as e:
        return _agreed_exit(comm, 2, str(e))
    if results:
        last = results[-1]
        say(f"done: {plural(trainer.step, 'step')}, test accuracy {last.test_accuracy:.4f}, "
            f"test loss {last.test_loss:.4f}")
    elif args.resume:
        say(f"nothing to do: the checkpoint is at epoch {trainer.epoch} of --epochs "
            f"{args.epochs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
