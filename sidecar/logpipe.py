"""`python -m sidecar.logpipe LOG -- PROGRAM [ARGS...]`: run a program with its output in a rotating log.

launchd appends an agent's stdout and stderr to files it never rotates, and ComfyUI under launchd runs
for months writing a line per prompt (and tqdm bars). Its agent runs it through this pipe instead: the
output goes to LOG, rotated at 10 MB into LOG.1 ... LOG.5 like the daemon's own log; SIGTERM, SIGINT
and SIGHUP are passed on to the program, and the pipe exits with the program's status (128 + the
signal's number when a signal ended it), so launchd's KeepAlive sees the program itself.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

LOG_BYTES, LOG_BACKUPS = 10 * 1024 * 1024, 5
MAX_LINE = 64 * 1024  # a line without an end (a progress bar) is written in pieces this size
STDERR_LIMIT = 256 * 1024  # a launchd stderr file past this is emptied at the next start


def trim_stderr(fd: int = 2, limit: int = STDERR_LIMIT) -> bool:
    """When stderr is a regular file (launchd's StandardErrorPath) larger than `limit`, empty it and say
    so in one line. launchd opens it write-only for appending (nothing to read back), and later writes go
    to the new end. A crash loop at start (a bad configuration, retried every 10 s) then costs at most
    `limit` bytes, not a file that grows for months. Returns whether it trimmed."""
    with contextlib.suppress(OSError):
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size <= limit:
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"(earlier output, {info.st_size} bytes, removed at start: this file is kept under "
                     f"{limit} bytes; the log is the rotating sidecar.log)\n".encode())
        return True
    return False


def run(log_path: Path, command: list[str], max_bytes: int = LOG_BYTES, backups: int = LOG_BACKUPS) -> int:
    trim_stderr()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(log_path, maxBytes=max_bytes, backupCount=backups,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as exc:
        print(f"logpipe: cannot start {command[0]}: {exc}", file=sys.stderr)
        return 127
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    assert proc.stdout is not None
    try:
        while True:
            line = proc.stdout.readline(MAX_LINE)
            if not line:
                break
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            handler.handle(logging.makeLogRecord({"msg": text, "levelno": logging.INFO}))
    finally:
        handler.close()
    code = proc.wait()
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m sidecar.logpipe", usage="%(prog)s LOG [options] -- PROGRAM [ARGS...]",
                                     description="Run PROGRAM with its output in a rotating LOG.")
    parser.add_argument("log", type=Path, help="the rotating log file")
    parser.add_argument("--max-bytes", type=int, default=LOG_BYTES)
    parser.add_argument("--backups", type=int, default=LOG_BACKUPS)
    args = parser.parse_args(ours)
    if not command:
        parser.error("no program given after --")
    return run(args.log, command, args.max_bytes, args.backups)


if __name__ == "__main__":
    sys.exit(main())
