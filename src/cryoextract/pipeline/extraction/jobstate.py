"""What a job has finished, kept on disk so an interrupted run can resume, and its lock.

Layout under ``OUT/.cryoextract/``: ``job.json`` (the parameters and inputs that define
the job), ``lock`` (:class:`cryoextract.pipeline.frame.JobLock`) and ``done/`` (one
record per finished micrograph: its particle rows and dropped picks as Arrow IPC
files plus a small JSON; written by the worker after its stacks, renamed into place
last, so a record only exists for a micrograph whose stacks are complete). A record
holds the fingerprint of the micrograph's inputs as the task read them
(:func:`inputs_fingerprint`): a micrograph whose micrograph file, picks or CTF changed
since is done again on ``--resume``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from cryoextract.errors import ParameterError
from cryoextract.io.atomic import atomic_file, write_text_atomic
from cryoextract.io.mrc import stack_image_count
from cryoextract.pipeline.extraction.params import ExtractParams
from cryoextract.pipeline.extraction.task import (
    MicrographResult,
    MicrographTask,
    os_error_result,
    run_task,
)
from cryoextract.pipeline.frame import STATE_DIR


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


#: inputs up to this size are fingerprinted by their content, larger ones by size and
#: modification time (a micrograph)
HASHED_BYTES = 1 << 20


def file_fingerprint(path: str | os.PathLike[str] | None) -> list[Any] | None:
    """A cheap fingerprint of a file: the SHA-256 of a small file's content, else its
    size and modification time in ns; ``["missing"]`` when it cannot be read."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
        if stat.st_size <= HASHED_BYTES:
            with open(path, "rb") as stream:
                return ["sha256", hashlib.sha256(stream.read()).hexdigest()]
    except OSError:
        return ["missing"]
    return ["stat", stat.st_size, stat.st_mtime_ns]


def _table_fingerprint(table: pd.DataFrame | None) -> str | None:
    if table is None:
        return None
    digest = hashlib.sha256("\t".join(map(str, table.columns)).encode())
    try:
        digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    except (TypeError, ValueError):  # a column of mixed objects
        digest.update(table.to_csv(index=False).encode())
    return digest.hexdigest()


def inputs_fingerprint(task: MicrographTask) -> str:
    """What a micrograph's result depends on besides the job's parameters: the
    micrograph file, its picks (the file, or the rows given) and its per-micrograph
    metadata (CTF, optics), in one digest."""
    what = {"micrograph": file_fingerprint(task.micrograph_path),
            "coords": file_fingerprint(task.coords_path),
            "picks": _table_fingerprint(task.picks),
            "metadata": _jsonable(task.metadata), "optics": _jsonable(task.optics)}
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def job_definition(params: ExtractParams, inputs: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for ``--resume`` to continue a run: parameters, inputs and the
    version of cryoextract (another version may cut other particles)."""
    import cryoextract

    return {"version": cryoextract.__version__, "params": _jsonable(params),
            "inputs": _jsonable(inputs)}


def _job_record(job_file: Path, flag: str = "--resume") -> dict[str, Any]:
    """The recorded job definition; ParameterError (starting with ``flag``, the option
    that continues the run) when it is not one (a file cut short or edited by hand: the
    run it records cannot be continued)."""
    try:
        record = json.loads(job_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        record = exc
    if not isinstance(record, dict):
        raise ParameterError(f"{flag}: {job_file} is not a job record cryoextract can "
                             "read; use --overwrite, or a new --out")
    return record


class JobState:
    """Finished-micrograph records of one output directory."""

    def __init__(self, out_dir: Path):
        self.root = Path(out_dir) / STATE_DIR
        self.done_dir = self.root / "done"

    def start(self, definition: dict[str, Any], *, resume: bool,
              flag: str = "--resume") -> None:
        """Record the job, or check on ``resume`` that it is the same job as before;
        ``flag``: the option the user continued it with (``--resume``, ``--watch``), which
        a refusal names."""
        self.done_dir.mkdir(parents=True, exist_ok=True)
        job_file = self.root / "job.json"
        text = json.dumps(definition, indent=2, sort_keys=True)
        if resume and job_file.is_file():
            before = _job_record(job_file, flag)
            if before == json.loads(text):
                return
            if before.get("version") != definition["version"]:
                raise ParameterError(
                    f"{flag}: {self.root.parent} holds a run of cryoextract "
                    f"{before.get('version', 'of an earlier version')}, this is "
                    f"{definition['version']} ({job_file}); use --overwrite, or a new --out")
            raise ParameterError(
                f"{flag}: {self.root.parent} holds a run with other parameters or "
                f"inputs ({job_file}); use the same options, or --overwrite"
            )
        write_text_atomic(job_file, text)

    def _base(self, task: MicrographTask) -> Path:
        """Records are named by micrograph, so a growing input list keeps them valid."""
        digest = hashlib.sha1(task.micrograph_name.encode()).hexdigest()[:16]
        return self.done_dir / digest

    def record(self, task: MicrographTask, result: MicrographResult,
               inputs: str | None = None) -> None:
        """Keep a finished micrograph's rows (only call once its stacks are in place);
        ``inputs``: the fingerprint of its inputs as the task read them."""
        if result.error is not None:
            return
        base = self._base(task)
        tables = {"particles": result.particles, "dropped": result.dropped}
        for name, table in tables.items():
            if table is not None:
                with atomic_file(base.with_name(f"{base.name}.{name}.arrow")) as stream:
                    table.reset_index(drop=True).to_feather(stream)
        meta = {"micrograph": task.micrograph_name, "warnings": result.warnings,
                "inputs": inputs or inputs_fingerprint(task),
                "shape_yx": result.shape_yx, "tables": [k for k, v in tables.items()
                                                        if v is not None]}
        write_text_atomic(base.with_suffix(".json"), json.dumps(meta))

    def load(self, task: MicrographTask) -> MicrographResult | None:
        """A finished micrograph's result, or ``None`` if it must be (re)done.

        Kept only when its record is complete, its inputs are those it was made from
        (:func:`inputs_fingerprint`) and every stack it names holds exactly its particles.
        """
        base = self._base(task)
        try:
            meta = json.loads(base.with_suffix(".json").read_text())
            if meta["micrograph"] != task.micrograph_name or \
                    meta.get("inputs") != inputs_fingerprint(task):
                return None
            tables = {name: pd.read_feather(base.with_name(f"{base.name}.{name}.arrow"))
                      for name in meta["tables"]}
        except (OSError, ValueError, KeyError):
            return None
        particles = tables.get("particles")
        count = 0 if particles is None else len(particles)
        if count:
            for output in task.params.outputs:
                if stack_image_count(task.stack_path(output)) != count:
                    return None
        shape = meta.get("shape_yx")
        if particles is not None and "rlnImageName" in particles.columns and count and \
                not str(particles["rlnImageName"].iloc[0]).endswith(task.stack_name):
            return None  # the stack name changed (e.g. a new micrograph with the same stem)
        return MicrographResult(
            task.index, task.micrograph_name, particles=particles,
            dropped=tables.get("dropped"), warnings=list(meta.get("warnings", [])),
            shape_yx=None if shape is None else (int(shape[0]), int(shape[1])),
        )


def run_and_record(task: MicrographTask) -> MicrographResult:
    """Run one task and keep its record, in the worker that wrote its stacks.

    Recording where the stacks are written keeps the driver's work per micrograph to
    gathering rows, whatever runs the tasks.
    """
    inputs = inputs_fingerprint(task)  # before reading them: a later edit is redone
    result = run_task(task)
    try:
        JobState(Path(task.out_dir)).record(task, result, inputs)
    except OSError as exc:
        return os_error_result(task, exc)
    return result
