"""Runs model files through backend="llama" in child processes, so a file that
kills or hangs llama.cpp fails a test instead of the test run.

    outcomes = run([Job(path), Job(path2, n_ctx=0), Job(path3, op="tokenize")])
    outcomes[0].survived, outcomes[0].error_class, outcomes[0].message

One child serves many jobs in turn (starting a child costs ~0.3 s, a tiny
model ~5 ms); when one dies or stays silent past its time, that job is
recorded as died / hung and a fresh child takes the jobs after it.  The
child is this file run as a script:

    python tests/llama_batch.py < jobs.json      (one JSON result per line)
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[1]
# What one job may take: loading, tokenizing and evaluating a tiny model is
# milliseconds; a hang is a kernel that never returns.
JOB_SECONDS = 30.0
# Text reaching past the tiny models' vocabulary (the emoji needs byte tokens).
PROMPT = "hello world, h\u00e9llo w\u00f6rld \u4e2d \U0001f600\n\t!"


@dataclasses.dataclass(frozen=True)
class Job:
    path: str | os.PathLike[str]
    op: str = "session"  # "session": create, tokenize, evaluate; "tokenize": per-call tokenize
    backend: str = "llama"
    n_ctx: int = 64
    env: tuple[tuple[str, str], ...] = ()  # set in the child for this job only


@dataclasses.dataclass(frozen=True)
class Outcome:
    survived: bool  # the child returned from the job
    error_class: str | None = None  # the BitnetError subclass raised, None on success
    message: str = ""  # its message, or how the child ended

    def __str__(self) -> str:
        if not self.survived:
            return f"child {self.message}"
        return f"{self.error_class}: {self.message}" if self.error_class else "ok"


def run(jobs: Iterable[Job], job_seconds: float = JOB_SECONDS) -> list[Outcome]:
    """The outcome of every job, in order."""
    todo = list(jobs)
    results: list[Outcome] = []
    while len(results) < len(todo):
        results += _run_child(todo[len(results) :], job_seconds)
    return results


def _run_child(jobs: list[Job], job_seconds: float) -> list[Outcome]:
    """Outcomes of a prefix of jobs: all of them, or up to and including the one that ended the child."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GGML_NO_BACKTRACE": "1"}  # no gdb attach on an abort
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    payload = [{**dataclasses.asdict(j), "path": os.fspath(j.path)} for j in jobs]
    proc.stdin.write(json.dumps(payload))
    proc.stdin.close()
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr or ()), daemon=True).start()
    out: list[Outcome] = []
    while len(out) < len(jobs):
        try:
            line = lines.get(timeout=job_seconds)
        except queue.Empty:
            proc.kill()
            proc.wait()
            out.append(Outcome(False, message=f"hung: no result within {job_seconds:g} s"))
            return out
        if line is None:  # the child ended in the middle of a job
            rc = proc.wait()
            why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with {rc}"
            tail = " | ".join(x.strip() for x in stderr[-4:] if x.strip())
            out.append(Outcome(False, message=f"{why} ({tail[-600:]})"))
            return out
        r = json.loads(line)
        out.append(Outcome(True, r["class"], r["message"]))
    proc.wait()
    return out


# ---- the child ------------------------------------------------------------------------


def _child() -> None:
    import pytest_bitnet as bn

    for job in json.load(sys.stdin):
        saved = {k: os.environ.get(k) for k, _ in job["env"]}
        os.environ.update(dict(job["env"]))
        try:
            if job["op"] == "tokenize":
                bn.tokenize(job["path"], PROMPT, backend=job["backend"])
            else:
                with bn.BitnetSession.create(job["path"], n_ctx=job["n_ctx"], backend=job["backend"], timeout=10) as s:
                    tokens = s.tokenize(PROMPT, timeout=10)
                    s.evaluate(tokens[:8], timeout=10)
            result = {"class": None, "message": ""}
        except bn.BitnetError as exc:
            result = {"class": type(exc).__name__, "message": str(exc)}
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _child()
