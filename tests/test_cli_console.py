"""The ``cryoextract`` console entry point (exit codes, output flushed, threads at exit)
and the help texts (every written default shown).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cryoextract
from helpers import cli_env


def test_console_entry_point_keeps_exit_codes_and_flushes_piped_output(tmp_path):
    """``main`` leaves without interpreter teardown: codes and buffered output must survive."""
    helped = subprocess.run([sys.executable, "-m", "cryoextract", "subtract", "--help"],
                            capture_output=True, text=True, timeout=120, env=cli_env())
    assert helped.returncode == 0 and "--mask-mode" in helped.stdout
    usage = subprocess.run([sys.executable, "-m", "cryoextract", "subtract", "--bogus"],
                           capture_output=True, text=True, timeout=120, env=cli_env())
    assert usage.returncode == 2 and "--bogus" in usage.stderr
    failed = subprocess.run([sys.executable, "-m", "cryoextract", "restack", "--particles",
                             str(tmp_path / "none.star"), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=120, env=cli_env())
    assert failed.returncode == 2 and "none.star" in failed.stderr
    # an atexit handler registered during the command still runs, after the output
    script = ("import atexit, sys\n"
              "from cryoextract.cli import app\n"
              "atexit.register(lambda: print('atexit ran'))\n"
              "sys.argv = ['cryoextract', 'subtract', '--help']\n"
              "app.main()\n")
    buffered = cli_env()
    buffered.pop("PYTHONUNBUFFERED", None)  # piped stdout is then block-buffered
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=120, env=buffered)
    assert ended.returncode == 0
    assert ended.stdout.index("--mask-mode") < ended.stdout.index("atexit ran")
    # threads still running at the end (here an executor never shut down, whose idle
    # worker only the interpreter's exit wakes) end as in a normal exit, without a hang
    script = ("import sys, time\n"
              "from concurrent.futures import ThreadPoolExecutor\n"
              "from cryoextract.cli import app\n"
              "def late():\n"
              "    time.sleep(0.5)\n"
              "    print('thread done', flush=True)\n"
              "pool = ThreadPoolExecutor(1)\n"
              "pool.submit(late)\n"
              "sys.argv = ['cryoextract', 'subtract', '--bogus']\n"
              "app.main()\n")
    waited = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env=buffered)
    assert waited.returncode == 2 and "thread done" in waited.stdout


def test_help_shows_every_written_default():
    """Rich reads ``[...]`` in help texts as markup and drops it unless escaped."""
    import re

    from typer.testing import CliRunner

    from cryoextract.cli.app import app

    sources = sorted((Path(cryoextract.__file__).parent / "cli").glob("*.py"))
    written = set()
    for source in sources:
        text = re.sub(r'"\s*\n\s*"', "", source.read_text())  # join implicit concatenations
        written.update(re.findall(r"\[default: ([^\]]+)\]", text))
    assert len(written) >= 8
    shown = ""
    for command in ("extract", "subtract", "restack", "downsample", "select", "convert",
                    "report"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"},
                                    terminal_width=400)
        assert result.exit_code == 0, result.output
        shown += " ".join(result.output.replace("│", " ").split()) + "\n"
    missing = [d for d in written if f"[default: {' '.join(d.split())}]" not in shown]
    assert not missing, missing
