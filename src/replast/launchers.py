"""Where and how the runs of a sweep execute; every run is its own `python -m replast finetune` process.

A crash, OOM or SIGKILL therefore costs one run, never the sweep. `run_local` keeps N processes busy (one
GPU each when several are visible); `run_slurm` submits a submitit job array. Only the trainer writes
`finished`; `finish` marks a run that died without a word as `failed:<why>` so the next sweep resumes it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from replast import runfiles
from replast.checkpoint import write_json
from replast.errors import ConfigError, ReplastError

LAUNCH_FILE = "launch.json"
LOG_FILE = "log.txt"
SLURM_ALIVE = {"RUNNING", "PENDING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "UNKNOWN"}


@dataclass(frozen=True)
class Job:
    hash: str
    config: Path  # OUT/runs/<hash>/config.yaml

    @property
    def run_dir(self) -> Path:
        return self.config.parent


OnDone = Callable[[Job, str], None]


def finetune_command(config: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "replast", "finetune", "--config", str(config)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def start(config: str | os.PathLike, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start one run in the background, its output appended to log.txt; record who runs it in launch.json."""
    # Absolute, so that `is_alive` finds launch.json's path in the command line whatever the working directory.
    config = Path(config).resolve()
    run_dir = config.parent
    with (run_dir / LOG_FILE).open("ab") as log:
        log.write(f"\n===== {_now()} start on {socket.gethostname()}\n".encode())
        log.flush()
        proc = subprocess.Popen(finetune_command(config), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    write_json(run_dir / LAUNCH_FILE, {"pid": proc.pid, "host": socket.gethostname(), "started": _now(),
                                       "config": str(config), "env": dict(env or {}),
                                       **_slurm_identity(run_dir)})
    return proc


def _slurm_identity(run_dir: Path) -> dict[str, Any]:
    """Inside a submitit task: its job id and folder, so another machine can ask the queue about it."""
    try:
        import submitit

        job_id = submitit.JobEnvironment().job_id
    except Exception:  # not inside a submitit task
        return {}
    # submitit's own record of its folder: the sweep writes launch.json only once the whole array is submitted
    folder = os.environ.get("SUBMITIT_FOLDER")
    if not folder:
        try:
            folder = json.loads((run_dir / LAUNCH_FILE).read_text()).get("slurm_folder")
        except (OSError, ValueError, AttributeError):
            folder = None
    return {"slurm_job_id": job_id, "slurm_folder": folder}


def finish(run_dir: str | os.PathLike, exit_code: int) -> str:
    """The run's final status; a run that ended without writing one is marked failed:<why>."""
    status = runfiles.read_status(run_dir)
    state = status["status"] if status else "missing"
    if state not in ("queued", "running", "missing", "damaged"):
        return state
    kind = "bad-input" if exit_code == 2 else "killed" if exit_code < 0 else "crash" if exit_code else "unfinished"
    runfiles.write_status(run_dir, f"failed:{kind}", exit_code=exit_code, reason=last_log_line(run_dir))
    return f"failed:{kind}"


def last_log_line(run_dir: str | os.PathLike) -> str:
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_job(config: str, env: Mapping[str, str] | None = None) -> str:
    """Run one job to the end (what each submitit array task executes); returns its final status."""
    proc = start(config, env)
    try:
        code = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    return finish(Path(config).parent, code)


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def is_alive(run_dir: str | os.PathLike) -> bool:
    """Whether the process (or SLURM job) recorded in launch.json may still be working on this run."""
    try:
        info = json.loads((Path(run_dir) / LAUNCH_FILE).read_text())
    except (OSError, ValueError):
        return False
    if info.get("host") == socket.gethostname() and info.get("pid"):
        return _pid_runs(int(info["pid"]), str(info.get("config", "")))
    if info.get("slurm_job_id") and info.get("slurm_folder"):
        return _slurm_state(info["slurm_folder"], str(info["slurm_job_id"])) in SLURM_ALIVE
    # Another machine without a queue to ask: assume it still runs rather than run it twice.
    return info.get("host") not in (None, socket.gethostname())


def _pid_runs(pid: int, config: str) -> bool:
    # The pid must still be our finetune process: pids are reused, so also match its command line.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and config in cmdline.replace("\0", " ")


def _slurm_state(folder: str, job_id: str) -> str:
    try:
        import submitit

        return str(submitit.SlurmJob(folder=folder, job_id=job_id).state)
    except Exception:  # no sacct here, or an unreadable folder: the state is unknown
        return "UNKNOWN"


def visible_gpus() -> list[str]:
    """CUDA device ids this process may use (honours CUDA_VISIBLE_DEVICES)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:
        return []


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_share(n: int) -> dict[str, str]:
    """OMP_NUM_THREADS for each of `n` runs at once: the cores split evenly. Each run would otherwise take
    every core (n× oversubscribed: half the speed for 2 jobs on 2 cores), and the thread count changes a run's
    floating-point results, so `--jobs` would too. A user's OMP_NUM_THREADS is kept; one job keeps torch's
    default."""
    if n == 1 or "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, available_cpus() // n))}


def taken_elsewhere(run_dir: str | os.PathLike) -> str | None:
    """'finished' or 'busy' when another sweep of the same OUT has finished or is running this queued run."""
    status = runfiles.read_status(run_dir)
    if status and status["status"] == runfiles.FINISHED:
        return runfiles.FINISHED
    return "busy" if is_alive(run_dir) else None


def run_local(jobs: Sequence[Job], n: int, on_done: OnDone, *, pin_gpus: bool = True, poll_s: float = 0.2) -> None:
    """Run `jobs` with at most `n` at once, the cores shared between them; with several GPUs each slot gets
    its own CUDA_VISIBLE_DEVICES. A job another sweep took while it waited is not started: `on_done` gets
    'finished' or 'busy' for it."""
    if n < 1:
        raise ConfigError(f"jobs={n}: must be at least 1")
    gpus = visible_gpus() if pin_gpus else []
    threads = thread_share(n)
    pending, running = deque(jobs), {}
    free = list(range(n))
    try:
        while pending or running:
            while pending and free:
                job = pending.popleft()
                if (taken := taken_elsewhere(job.run_dir)) is not None:
                    on_done(job, taken)
                    continue
                slot = free.pop(0)
                env = {**threads, **({"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if len(gpus) > 1 else {})}
                running[start(job.config, env)] = (job, slot)
            done = [p for p in running if p.poll() is not None]
            for proc in done:
                job, slot = running.pop(proc)
                free.append(slot)
                on_done(job, finish(job.run_dir, proc.returncode))
            if not done:
                time.sleep(poll_s)
    finally:
        for proc, (job, _) in running.items():
            _stop(proc)
            finish(job.run_dir, proc.returncode)


SLURM_MINIMUMS = {"time_min": 1, "gpus_per_node": 0, "cpus_per_task": 1}
"""Least value of each SLURM option (0 GPUs: a CPU cluster); a missing or None option takes the default."""


def slurm_option_errors(options: Mapping[str, Any]) -> list[str]:
    """Messages for SLURM options below their minimum or not whole numbers (0 used to become the default)."""
    errors = []
    for key, least in SLURM_MINIMUMS.items():
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            errors.append(f"{key}={value!r}: must be a whole number >= {least}")
    return errors


def slurm_executor(folder: str | os.PathLike, options: Mapping[str, Any], *, parallel: int = 0) -> Any:
    """The submitit executor of a job array; `options`: cluster (slurm|local|debug), partition, time_min,
    gpus_per_node, cpus_per_task, name. Writes nothing, except that submitit's `local` executor creates
    `folder`; one ReplastError line when it cannot submit here."""
    try:
        import submitit
    except ImportError as e:
        raise ReplastError("the slurm launcher needs submitit, which is not installed: pip install submitit, "
                           "or pass --launcher local") from e

    errors = slurm_option_errors(options)
    if errors:
        raise ConfigError("; ".join(errors))
    params: dict[str, Any] = {"timeout_min": int(options.get("time_min") or 60),
                              "gpus_per_node": int(options.get("gpus_per_node") or 0),
                              "cpus_per_task": int(options.get("cpus_per_task") or 1),
                              "name": str(options.get("name") or "replast")}
    if options.get("partition"):
        params["slurm_partition"] = options["partition"]
    if parallel > 0:
        params["slurm_array_parallelism"] = parallel
    cluster = options.get("cluster") or "slurm"
    try:  # no srun on this machine: submitit refuses the executor itself
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        executor.update_parameters(**params)
    except Exception as e:
        raise ReplastError(f"the {cluster} executor cannot submit from here ({' '.join(str(e).split())[:300]}); "
                           "sweep from a SLURM login node, or pass --cluster local to try the study here") from e
    return executor


def run_slurm(jobs: Sequence[Job], folder: str | os.PathLike, executor: Any, on_done: OnDone, *,
              wait: bool = True) -> list[str]:
    """Submit `jobs` as one job array of `executor` (see `slurm_executor`, built on `folder`); returns the job ids."""
    try:
        submitted = executor.map_array(run_job, [str(j.config) for j in jobs])
    except Exception as e:  # sbatch missing or refused: one line, not a traceback
        raise ReplastError(f"submitting {len(jobs)} runs failed: {' '.join(str(e).split())[:300]}") from e
    for job, sub in zip(jobs, submitted, strict=True):
        write_json(job.run_dir / LAUNCH_FILE, {"slurm_job_id": str(sub.job_id), "slurm_folder": str(folder),
                                               "host": None, "started": _now()})
    if wait:
        for job, sub in zip(jobs, submitted, strict=True):
            try:
                sub.result()
            except Exception:  # the task itself died (time limit, node failure)
                pass
            on_done(job, finish(job.run_dir, 1))
    return [str(s.job_id) for s in submitted]
