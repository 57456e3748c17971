"""Each log line once: on the console and in `<output-dir>/logs/log.txt` of a training run, and for any CLI."""

import io
import logging
import re
import subprocess
import sys
from collections import Counter

import pytest

from helpers import PYTHON, REPO, TINY_FLUO, child_env

# the two console formats: the CLIs' (`cli.LOG_FORMAT`) and upstream's (`dinov2.logging`, also the log file's)
OURS = re.compile(r"^\d\d:\d\d:\d\d [A-Z]+ [\w.]+: (.*)$")
UPSTREAM = re.compile(r"^[DIWEC]\d{8} \d\d:\d\d:\d\d \d+ [\w.]+ [\w.<>]+:\d+\] (.*)$")


def _messages(lines):
    """Counter of the first line of each log record, whatever its format."""
    out = Counter()
    for line in lines:
        m = OURS.match(line) or UPSTREAM.match(line)
        if m:
            out[m.group(1)] += 1
    return out


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    from dinov2_cell.synthetic import generate_plates

    out = tmp_path_factory.mktemp("plates")
    generate_plates(out, plates=1, wells=4, sites=4, size=64, seed=0, progress=False)
    return str(out)


def test_a_training_run_logs_each_line_once_on_the_console_and_in_the_file(plates, tmp_path):
    out = tmp_path / "run"
    opts = ["optim.epochs=1", "train.OFFICIAL_EPOCH_LENGTH=2", "health.period_iterations=0"]
    proc = subprocess.run(
        [PYTHON, "-m", "dinov2_cell.run.train", "--config-file", TINY_FLUO, "--out", str(out)]
        + ["--data-root", plates, *opts],
        cwd=REPO,
        env=child_env(OMP_NUM_THREADS=2),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = _messages(proc.stdout.splitlines() + proc.stderr.splitlines())
    log_file = _messages((out / "logs" / "log.txt").read_text().splitlines())
    assert log_file["Schedulers ready."] == 1 and console["Schedulers ready."] == 1  # was 1 in the file, 2 on console
    assert proc.stdout.strip() == str(out / "eval" / "final" / "teacher_checkpoint.pth")  # logs on stderr only
    assert sum(log_file.values()) > 20  # the run's records: config, model, iterations, checkpoint
    # every record of the file reaches the console exactly as often (not twice: once per handler)
    assert {m: console[m] for m in log_file} == dict(log_file)
    # ... and the file holds each once-per-run record once
    once = ["Schedulers ready.", "Starting training from iteration 0"]
    assert [log_file[m] for m in once] == [1, 1]
    assert sum(n for m, n in log_file.items() if m.startswith("final teacher checkpoint: ")) == 1
    # the console has one format throughout: the CLIs'
    assert all(OURS.match(line) for line in proc.stderr.splitlines() if UPSTREAM.match(line) or OURS.match(line))
    assert sum(n for m, n in console.items() if m.startswith("CPJUMP1: ")) == 1


def test_the_cli_console_handler_prints_each_record_once(capsys):
    from dinov2_cell.cli import ConsoleHandler, setup_logging

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    log = logging.getLogger("dinov2_cell.test")
    try:
        setup_logging()
        ours = [h for h in root.handlers if isinstance(h, ConsoleHandler)]
        assert len(root.handlers) == 1 and len(ours) == 1
        ours[0].setStream(stream := io.StringIO())
        log.info("alone")
        # what upstream's training setup attaches on the main process: a console handler and a file handler
        console, log_file = logging.StreamHandler(sys.stdout), logging.StreamHandler(io.StringIO())
        root.addHandler(console)
        root.addHandler(log_file)
        log.info("main process")
        root.removeHandler(console)  # a non-main process: upstream attaches the file handler only
        log.info("other process")
        assert [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()] == [
            "alone",
            "main process",
            "other process",
        ]
        assert capsys.readouterr().out == ""  # the other console handler was muted
        assert log_file.stream.getvalue() == "main process\nother process\n"
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
