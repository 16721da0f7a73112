"""``--overwrite`` discards an earlier run's outputs without waiting for their deletion
(``pipeline/trash.py``): renamed away at once, deleted by a process while the job runs,
waited for when the lock is released. Nothing of the old run is readable under its old
names once the job has claimed the folder, nothing outside OUT is touched (a link goes,
not what it points to), and a trash folder a killed run left is deleted by the next run
and never counts as an output."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cryoextract.pipeline import trash
from cryoextract.pipeline.frame import STATE_DIR, JobLock, claim_output, holds_outputs
from extract_cli import ok, run_one, simulated


def _old_run(out: Path, outside: Path) -> list[Path]:
    """A previous run's outputs in ``out``, one of them a link to a file outside it."""
    (out / "Particles").mkdir(parents=True)
    for i in range(3):
        (out / "Particles" / f"stack_{i}.mrcs").write_bytes(os.urandom(1 << 16))
    (out / "particles.star").write_text("data_\n")
    outside.write_text("precious")
    (out / "summary.json").symlink_to(outside)
    return [out / "Particles", out / "particles.star", out / "summary.json"]


def test_overwrite_discards_outputs_at_once_and_deletes_them_by_the_end(tmp_path: Path) -> None:
    out, outside = tmp_path / "OUT", tmp_path / "elsewhere.txt"
    outputs = _old_run(out, outside)
    (out / "notes.txt").write_text("the user's")  # not an output: kept
    with claim_output(out, overwrite=True, outputs=outputs):
        for path in outputs:  # gone from their names before the job writes anything
            assert not os.path.lexists(path)
        (out / "particles.star").write_text("new\n")
    assert (out / "particles.star").read_text() == "new\n"
    assert outside.read_text() == "precious"  # the link went, not its target
    assert (out / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in (out / STATE_DIR).iterdir()) == []  # no trash, no lock


def test_the_deletion_runs_in_another_process_while_the_lock_is_held(tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    outputs = _old_run(out, tmp_path / "x.txt")
    with JobLock(out) as lock:
        lock.discard(outputs)
        processes = list(lock._deleting)
        assert len(processes) == 1 and processes[0].args[:3] == ["rm", "-rf", "--"]
        assert os.getsid(processes[0].pid) != os.getsid(0)  # not stopped by the job's Ctrl-C
        folder = Path(processes[0].args[-1])
        assert folder.parent == out / STATE_DIR and trash.is_trash(folder.name)
        assert not holds_outputs(out)  # what is being deleted is no output
    assert processes[0].returncode == 0
    assert not folder.exists()


def test_trash_a_killed_run_left_is_no_output_and_the_next_run_deletes_it(
    tmp_path: Path,
) -> None:
    out = tmp_path / "OUT"
    left = out / STATE_DIR / "trash-4242-0"
    (left / "0-Particles").mkdir(parents=True)
    (left / "0-Particles" / "a.mrcs").write_bytes(b"x" * 1000)
    assert not holds_outputs(out)  # a run without --overwrite is not refused for it
    with claim_output(out, overwrite=False, outputs=[out / "particles.star"]):
        pass
    assert not left.exists()


def test_a_linked_state_folder_gets_nothing_moved_into_it(tmp_path: Path) -> None:
    """OUT/.cryoextract a link to elsewhere: the outputs are removed in place, nothing is
    moved out of OUT, and trash-like folders there are not touched."""
    out, elsewhere = tmp_path / "OUT", tmp_path / "elsewhere"
    outputs = _old_run(out, tmp_path / "x.txt")
    (elsewhere / "trash-1-0").mkdir(parents=True)
    (out / STATE_DIR).symlink_to(elsewhere, target_is_directory=True)
    assert trash.discard(out / STATE_DIR, outputs) is None
    assert not any(os.path.lexists(p) for p in outputs)
    assert trash.discard_leftovers(out / STATE_DIR) == []
    assert sorted(p.name for p in elsewhere.iterdir()) == ["trash-1-0"]


def test_a_leftover_of_a_run_with_the_same_pid_is_no_obstacle(tmp_path: Path) -> None:
    """In a container every run may have pid 1: a killed run's trash folder named with
    this pid never collides with the new one."""
    out = tmp_path / "OUT"
    outputs = _old_run(out, tmp_path / "x.txt")
    for n in range(3):
        (out / STATE_DIR / f"trash-{os.getpid()}-{n}").mkdir(parents=True)
    with JobLock(out) as lock:
        lock.discard(outputs)
        assert not any(os.path.lexists(p) for p in outputs)
    assert sorted(p.name for p in (out / STATE_DIR).iterdir()) == []


def test_on_a_nearly_full_disk_the_outputs_are_deleted_before_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the disk could not hold the old outputs and the new ones together, they go
    at once, as before (nothing in the background)."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda _path: usage(10 * trash.FREE_MARGIN_BYTES, 0,
                                            trash.FREE_MARGIN_BYTES + 1000))
    out = tmp_path / "OUT"
    outputs = _old_run(out, tmp_path / "x.txt")  # 3 x 64 KiB of stacks: more than 1000 B
    assert trash.discard(out / STATE_DIR, outputs) is None
    assert not any(os.path.lexists(p) for p in outputs)
    assert list((out / STATE_DIR).iterdir()) == []


def test_without_rm_the_outputs_are_removed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rm(*_args: object, **_kwargs: object) -> None:
        raise FileNotFoundError("rm")

    monkeypatch.setattr(subprocess, "Popen", no_rm)
    out, outside = tmp_path / "OUT", tmp_path / "elsewhere.txt"
    outputs = _old_run(out, outside)
    assert trash.discard(out / STATE_DIR, outputs) is None
    assert not any(os.path.lexists(p) for p in outputs)
    assert list((out / STATE_DIR).iterdir()) == []
    assert outside.read_text() == "precious"


def test_an_output_that_can_be_neither_moved_nor_removed_stops_the_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale file the job could not get rid of would be taken for its own output: the
    claim fails (one-line OSError at the command) instead of carrying on."""
    out = tmp_path / "OUT"
    outputs = _old_run(out, tmp_path / "x.txt")
    stuck = out / "particles.star"

    def no_rename(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link", str(src))

    real_unlink = Path.unlink

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if path == stuck:
            raise PermissionError(13, "Permission denied", str(path))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(trash.os, "rename", no_rename)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(PermissionError):
        with claim_output(out, overwrite=True, outputs=outputs):
            pytest.fail("the job must not start")
    assert stuck.exists()


def test_a_failed_deletion_is_finished_in_the_driver(tmp_path: Path) -> None:
    folder = tmp_path / "trash-1-0"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f").write_text("x")
    failing = subprocess.Popen(["sh", "-c", "exit 3", "rm", str(folder)])
    failing.args = ["rm", "-rf", "--", str(folder)]
    trash.wait_all([failing])
    assert not folder.exists()


def test_extract_overwrite_gives_the_same_outputs_as_a_new_folder(tmp_path: Path) -> None:
    """The whole command: --overwrite over an earlier run (another box) writes what a run
    into a new folder writes (stacks byte for byte), and leaves no trash behind."""
    sim = simulated(tmp_path / "sim")
    ok(run_one(sim.base(tmp_path / "A", "--no-report", "--bin-to", "32", workers=2)))
    ok(run_one(sim.base(tmp_path / "A", "--no-report", "--overwrite", workers=2)))
    ok(run_one(sim.base(tmp_path / "B", "--no-report", workers=2)))
    stacks_a = sorted((tmp_path / "A" / "Particles").iterdir())
    stacks_b = sorted((tmp_path / "B" / "Particles").iterdir())
    assert [p.name for p in stacks_a] == [p.name for p in stacks_b] and stacks_a
    for a, b in zip(stacks_a, stacks_b, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert not [p for p in (tmp_path / "A" / STATE_DIR).iterdir() if trash.is_trash(p.name)]
