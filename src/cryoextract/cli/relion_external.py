"""``cryoextract-relion``: ``cryoextract extract`` as a RELION 3.1 External job.

RELION's pipeliner runs an External job from the project directory as one shell line
(``RelionJob::getCommandsExternalJob``, 3.1.3)::

    EXE --o External/job005/ [--in_movies S] [--in_mics S] [--in_parts S] [--in_coords S]
        [--in_3dref M] [--in_mask M] [--LABEL1 VALUE1 ... --LABEL10 VALUE10] --j N [OTHER ARGS]
        >> External/job005/run.out 2>> External/job005/run.err &

(filled input fields only; a spaced value gives several words; ``--pipeline_control
JOBDIR`` is appended when the line holds ``relion_``), then waits for
``JOBDIR/RELION_JOB_EXIT_SUCCESS`` (or ``_FAILURE``, ``_ABORTED``) and, on success,
registers the nodes listed in ``JOBDIR/RELION_OUTPUT_NODES.star``.

Here: ``--in_mics`` with ``--in_coords`` (a ``coords_suffix<SUFFIX>`` file whose folder
is the coordinate directory, RELION's ``--coord_dir``/``--coord_suffix``) or
``--in_parts`` (re-extraction); ``--j`` is ``--workers``; every other ``--LABEL VALUE``
is an option of ``cryoextract extract`` (underscores or dashes), handed to that command's
own parser. A job directory that holds a previous run of ours is continued (``--resume``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

SUCCESS = "RELION_JOB_EXIT_SUCCESS"
FAILURE = "RELION_JOB_EXIT_FAILURE"
ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
OUTPUT_NODES = "RELION_OUTPUT_NODES.star"
#: RELION 3.1 node type of a particles STAR (``NODE_PART_DATA``)
NODE_PARTICLES = 3
#: the run's JSON-lines progress (``--progress-log``), followed to print plain lines
PROGRESS_LOG = "progress.jsonl"
EXIT_ERROR = 2

#: ``cryoextract extract`` options this job sets itself, and from what
RESERVED = {"micrographs": "--in_mics", "coords": "--in_coords/--in_parts",
            "coords_dir": "--in_coords", "coords_suffix": "--in_coords", "out_dir": "--o",
            "workers": "--j", **dict.fromkeys(("overwrite", "resume", "quiet", "progress_log",
                                               "watch", "watch_timeout", "settle"), "the job")}
UNUSED_NODES = {"in_movies": "input movies", "in_3dref": "input 3D reference",
                "in_mask": "input 3D mask"}
TRUE_WORDS = {"", "yes", "true", "on", "1", "y"}
FALSE_WORDS = {"no", "false", "off", "0", "n"}


class JobError(Exception):
    """A failed job with a one-line reason (none: the reason is printed already)."""

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise JobError(message)


def parse_relion_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """RELION's own arguments, and the rest (the ``--LABEL VALUE`` parameters)."""
    parser = _Parser(prog="cryoextract-relion", allow_abbrev=False,
                     description="cryoextract extract as a RELION External job.")
    parser.add_argument("--o", dest="job_dir", required=True, help="job directory")
    parser.add_argument("--in_mics", help="micrographs STAR")
    parser.add_argument("--in_coords", help="coords_suffix*.star of a picking job")
    parser.add_argument("--in_parts", help="particles STAR (re-extraction)")
    for flag, what in UNUSED_NODES.items():
        parser.add_argument(f"--{flag}", help=f"{what} (not used: refused)")
    parser.add_argument("--j", type=int, help="parallel processes")
    parser.add_argument("--pipeline_control", help="passed by RELION; ignored")
    return parser.parse_known_args(list(argv))


def label_pairs(tokens: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``--label v1 v2 --flag --other=v`` as ``[(label, values), ...]``."""
    pairs: list[tuple[str, list[str]]] = []
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            label, eq, value = token[2:].partition("=")
            pairs.append((label, [value] if eq else []))
        elif pairs:
            pairs[-1][1].append(token)
        else:
            raise JobError(f"unexpected argument {token!r} (parameters are --label value)")
    return pairs


def extract_options() -> dict[str, Any]:
    """The options of ``cryoextract extract`` by flag (``--box``, ``--no-invert``...)."""
    import typer.main

    from cryoextract.cli.app import app

    command = typer.main.get_command(app).commands["extract"]  # type: ignore[attr-defined]
    return {flag: param for param in command.params
            for flag in (*param.opts, *getattr(param, "secondary_opts", ()))}


def parameter_args(tokens: Sequence[str], options: dict[str, Any]) -> list[str]:
    """The ``cryoextract extract`` arguments for RELION's ``--LABEL VALUE`` parameters."""
    args: list[str] = []
    for label, values in label_pairs(tokens):
        flag = "--" + label.replace("_", "-").lower()
        param = options.get(flag)
        if param is None:
            raise JobError(f"unknown parameter label {label!r}: not an option of "
                           f"cryoextract extract (see cryoextract extract --help)")
        if param.name in RESERVED:
            raise JobError(f"parameter label {label!r} is set by {RESERVED[param.name]}, "
                           f"not as a parameter")
        if param.is_flag:
            args += _flag(label, flag, param, values)
        elif param.multiple and values:  # --also-bin-to 64 32: each value once
            size = param.nargs  # --recenter-xyz takes three values a use
            if len(values) % size:
                raise JobError(f"parameter {label!r} takes {size} values a time, got "
                               f"{len(values)}: {' '.join(values)}")
            args += [word for at in range(0, len(values), size)
                     for word in (flag, *values[at:at + size])]
        elif len(values) != param.nargs:
            raise JobError(f"parameter {label!r} takes {param.nargs} value(s), got "
                           f"{len(values)}: {' '.join(values) or '(empty)'}")
        else:
            args += [flag, *values]
    return args


def _flag(label: str, flag: str, param: Any, values: list[str]) -> list[str]:
    """An on/off option from a label and a yes/no value (empty: yes)."""
    word = " ".join(values).strip().lower()
    if word not in TRUE_WORDS | FALSE_WORDS:
        raise JobError(f"parameter {label!r} takes yes or no, got {' '.join(values)!r}")
    if word in TRUE_WORDS:
        return [flag]
    opposite = param.opts if flag in param.secondary_opts else param.secondary_opts
    return [opposite[0]] if opposite else []


def relion_coordinates(in_coords: str) -> tuple[str, str]:
    """RELION's ``--coord_dir`` and ``--coord_suffix`` from a coordinate node:
    ``AutoPick/job004/coords_suffix_autopick.star`` -> ``AutoPick/job004``,
    ``_autopick.star`` (``getCommandsExtractJob``)."""
    path = Path(in_coords)
    if not path.name.startswith("coords_suffix") or path.name == "coords_suffix":
        raise JobError(f"--in_coords {in_coords}: not a RELION coordinate node "
                       f"(coords_suffix<SUFFIX>, e.g. coords_suffix_autopick.star)")
    return str(path.parent), path.name[len("coords_suffix"):]


def micrographs_of(in_coords: str) -> str:
    """The micrographs STAR a picking job names in its ``coords_suffix`` file."""
    path = Path(in_coords)
    words = path.read_text().split() if path.is_file() else []
    if not words:
        raise JobError(f"no input micrographs: fill 'Input micrographs' (--in_mics); "
                       f"{in_coords} names none")
    return words[0]


def check_coordinates(micrographs: str, coords_dir: str, suffix: str) -> list[Path]:
    """The coordinate files RELION would read, by its rule; fails when there is none."""
    from cryoextract.errors import CryoExtractError
    from cryoextract.io.coords import coordinate_file_candidates
    from cryoextract.io.micrographs import read_micrograph_set

    try:
        names = read_micrograph_set(micrographs).micrographs["rlnMicrographName"]
    except CryoExtractError as exc:
        raise JobError(str(exc)) from None
    expected = [coordinate_file_candidates(str(n), Path(coords_dir), suffix)[0]
                for n in names]
    if expected and not any(path.is_file() for path in expected):
        more = f" (and {len(expected) - 1} more like it)" if len(expected) > 1 else ""
        raise JobError(f"no coordinate file for any micrograph of {micrographs} by "
                       f"RELION's rule (coordinate directory {coords_dir}, suffix "
                       f"{suffix}): looked for {expected[0]}{more}")
    return [path for path in expected if not path.is_file()]


def input_args(args: argparse.Namespace) -> list[str]:
    """The ``cryoextract extract`` inputs for RELION's input nodes."""
    for flag, what in UNUSED_NODES.items():
        if getattr(args, flag):
            raise JobError(f"--{flag} ({what}) is not an input of cryoextract-relion; "
                           f"leave that field empty")
    if args.in_coords and args.in_parts:
        raise JobError("give input coordinates (--in_coords) or input particles "
                       "(--in_parts), not both")
    if args.in_parts:
        if not args.in_mics:
            raise JobError("re-extraction from --in_parts needs the micrographs: fill "
                           "'Input micrographs' (--in_mics)")
        return ["--micrographs", args.in_mics, "--coords", args.in_parts]
    if not args.in_coords:
        raise JobError("no input node: give input micrographs with input coordinates "
                       "(--in_mics, --in_coords) or input particles (--in_parts)")
    coords_dir, suffix = relion_coordinates(args.in_coords)
    micrographs = args.in_mics or micrographs_of(args.in_coords)
    for missing in check_coordinates(micrographs, coords_dir, suffix):
        print(f"no coordinate file {missing} (RELION's rule)", flush=True)
    return ["--micrographs", micrographs, "--coords-dir", coords_dir,
            "--coords-suffix", suffix]


class ProgressPrinter:
    """Follows the run's JSON-lines progress log in a thread: a plain line per
    micrograph on stdout (RELION's ``run.out``); stops the job when RELION asks
    (``RELION_JOB_ABORT_NOW``).

    The thread only reads and writes file descriptors, so worker processes forked
    meanwhile inherit no lock it could hold.
    """

    def __init__(self, log: Path, job_dir: Path, interval_s: float = 0.2):
        self.log, self.job_dir, self.interval_s = log, job_dir, interval_s
        self._stop = threading.Event()
        self._pending = b""
        self._fd = -1
        self._thread = threading.Thread(target=self._follow, daemon=True,
                                        name="cryoextract-relion-progress")

    def __enter__(self) -> ProgressPrinter:
        self.log.touch()
        self._fd = os.open(self.log, os.O_RDONLY)
        os.lseek(self._fd, 0, os.SEEK_END)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
        os.close(self._fd)

    def _follow(self) -> None:
        while True:
            if (self.job_dir / ABORT_NOW).exists():
                self._abort()
            self._drain()
            if self._stop.wait(self.interval_s):
                return

    def _drain(self) -> None:
        while chunk := os.read(self._fd, 1 << 16):
            self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            text = describe(line)
            if text:
                os.write(1, text.encode() + b"\n")

    def _abort(self) -> NoReturn:
        """RELION's abort: mark the job aborted, stop the workers and leave now (a
        stopped run is kept consistent on disk, as a killed one)."""
        (self.job_dir / ABORTED).touch()
        os.write(2, f"aborted: {self.job_dir / ABORT_NOW} found\n".encode())
        for child in multiprocessing.active_children():
            child.terminate()
        os._exit(EXIT_ERROR)


def describe(line: bytes) -> str | None:
    """A progress-log record as a plain line (``None`` for those not shown)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if record.get("event") == "start":
        return f"extracting {record.get('total')} micrograph(s)"
    if "micrograph" not in record:
        return None
    where = f"[{record.get('done')}/{record.get('total')}] {record['micrograph']}"
    if record.get("error"):
        return f"{where}: skipped ({record['error']})"
    return f"{where}: {record.get('particles')} particles"


def run_extract(argv: list[str]) -> None:
    """``cryoextract extract ARGV`` in this process, through its own parser."""
    import typer

    from cryoextract.cli.app import app

    try:
        code = app(args=["extract", *argv], prog_name="cryoextract", standalone_mode=False)
    except typer.Abort:
        raise JobError("interrupted") from None
    except typer.TyperException as exc:
        format_message = getattr(exc, "format_message", None)
        raise JobError(format_message() if format_message else str(exc)) from None
    if code not in (None, 0):  # 130: typer's answer to Ctrl-C; else it printed the error
        raise JobError("interrupted" if code == 130 else "")


def node_name(path: Path) -> str:
    """A pipeline node name: relative to the project (the working directory)."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def write_output_nodes(job_dir: Path, stars: Sequence[Path]) -> None:
    """``RELION_OUTPUT_NODES.star`` (RELION 3.1) listing ``stars`` as particles nodes."""
    rows = "".join(f"{node_name(star)} {NODE_PARTICLES}\n" for star in stars)
    text = ("\n# version 30001\n\ndata_output_nodes\n\nloop_\n_rlnPipeLineNodeName #1\n"
            f"_rlnPipeLineNodeType #2\n{rows}\n")
    from cryoextract.io.atomic import write_text_atomic

    write_text_atomic(job_dir / OUTPUT_NODES, text)


def run_job(job_dir: Path, args: argparse.Namespace, extras: list[str]) -> None:
    """Extract into ``job_dir``, report, and register the particles with RELION."""
    from cryoextract.pipeline.frame import STATE_DIR

    argv = input_args(args) + parameter_args(extras, extract_options())
    log = job_dir / PROGRESS_LOG
    if (job_dir / STATE_DIR / "job.json").is_file():
        mode = "--resume"  # RELION's "Continue" re-runs the job in its directory
        print(f"continuing the run in {job_dir} (--resume)", flush=True)
    else:
        mode = "--overwrite"  # the directory holds RELION's files (job.star, run.out...)
        log.unlink(missing_ok=True)
    if args.j is not None:
        argv += ["--workers", str(args.j)]
    argv += ["--out", str(job_dir), mode, "--quiet", "--progress-log", str(log)]
    print("cryoextract extract " + " ".join(argv), flush=True)
    try:
        with ProgressPrinter(log, job_dir):
            run_extract(argv)
    except JobError:
        if mode == "--resume":  # e.g. refused: other parameters than the earlier run's
            print("a continued job keeps its parameters and inputs: for others, make a "
                  "new job (or run it with relion_pipeliner --overwrite_jobs)", flush=True)
        raise
    summary = json.loads((job_dir / "summary.json").read_text())
    dropped = ", ".join(f"{k}: {v}" for k, v in summary["particles_dropped"].items())
    resumed = summary.get("micrographs_resumed", 0)
    print(f"particles kept: {summary['particles_kept']}; dropped: {dropped or 'none'}; "
          f"micrographs done: {summary['micrographs_done']}"
          f"{f' ({resumed} kept from the earlier run)' if resumed else ''}, skipped: "
          f"{len(summary['micrographs_skipped'])}", flush=True)
    if not summary["particles_kept"]:
        raise JobError(f"no particles extracted (see {job_dir / 'summary.json'})")
    stars = [Path(summary["particles_star"]), *map(Path, summary["additional_outputs"])]
    write_output_nodes(job_dir, stars)
    for star in stars:
        print(f"particles node (type {NODE_PARTICLES}): {node_name(star)}", flush=True)


def error(message: str) -> None:
    """The one-line error on stderr (RELION's ``run.err``)."""
    print("error: " + " ".join(message.split()), file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``cryoextract-relion``: exit 0 and ``RELION_JOB_EXIT_SUCCESS``, or
    exit 2 with a one-line error and ``RELION_JOB_EXIT_FAILURE``."""
    from cryoextract.cli.launch import defer_rich_modules

    defer_rich_modules()  # as the cryoextract command: typer need not import them
    try:
        args, extras = parse_relion_args(sys.argv[1:] if argv is None else argv)
    except JobError as exc:
        error(str(exc))
        sys.exit(EXIT_ERROR)
    job_dir = Path(args.job_dir)
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        for stale in (SUCCESS, FAILURE, ABORTED, OUTPUT_NODES):
            (job_dir / stale).unlink(missing_ok=True)
    except OSError as exc:
        error(f"{job_dir}: {exc.strerror or exc}")
        sys.exit(EXIT_ERROR)
    from cryoextract.pipeline.allocator import keep_freed_memory

    keep_freed_memory()
    try:
        run_job(job_dir, args, extras)
    except (Exception, KeyboardInterrupt) as exc:
        (job_dir / OUTPUT_NODES).unlink(missing_ok=True)
        (job_dir / FAILURE).touch()
        if not isinstance(exc, JobError):
            error("interrupted" if isinstance(exc, KeyboardInterrupt) else
                  f"{exc.filename or ''}: {exc.strerror or exc}" if isinstance(exc, OSError)
                  else f"{type(exc).__name__}: {exc}")
        elif exc.message:
            error(exc.message)
        sys.exit(EXIT_ERROR)
    (job_dir / SUCCESS).touch()
    sys.exit(0)
