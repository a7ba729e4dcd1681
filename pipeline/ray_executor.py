"""``python -m pipeline run --executor ray``: each command step as a Ray task (`RayBackend`).

Each step's command runs in a Ray task that asks for the resources of its model's ``resources``
entry (``cpus``, ``gpus``, ``memory_gb``; by default 1 CPU, and for a train or predict step of a
model whose ``device`` is not ``cpu`` one GPU when the cluster has GPUs), so Ray runs independent
steps (models, folds, the gate, test-set predictions) at the same time on the machines of the
cluster. A task runs the same command, with the same log file, as the local executor, in the
driver's working folder; in-process steps run in the driver.

One assumption: every node sees the work folder (and the repository, the data and the configs)
at the same path, on storage every node can read and write (NFS, a cluster file system), because
a task on one node reads what a task on another wrote. Start a cluster with ``ray start --head``
on one machine and ``ray start --address=HEAD:6379`` on the others, then
``python -m pipeline run CONFIG --executor ray --address auto`` on the head. Without
``--address`` a Ray instance is started here, with this machine's CPUs (``--ray-cpus``) and GPUs.

Ray is an optional extra (``pip install ray``); only this module imports it, when it is used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipeline.config import REPO, Pipeline, PipelineError
from pipeline.plan import Step
from pipeline.proc import STEP_ENV, CommandResult, run_command

log = logging.getLogger(__name__)

#: what a step asks for when its model's ``resources`` does not say
DEFAULT_CPUS = 1.0


def _ray():
    """The ``ray`` module, imported with its usage reporting off.

    Raises:
        PipelineError: if Ray is not installed, saying how to install it.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEPT_USAGE_STATS_PROMPT", "0")
    try:
        import ray
    except ImportError:
        raise PipelineError(
            "--executor ray needs Ray, which is not installed: pip install ray (or pip install -e '.[ray]')"
        ) from None
    return ray


def run_step_task(argv: list[str], cwd: str, env_extra: dict[str, str], log_file: str | None) -> CommandResult:
    """The body of a step's Ray task: its command, run on the worker with the worker's environment.

    Raises:
        OSError: if the log file cannot be written or the command cannot be started.
    """
    return run_command(argv, cwd, {**os.environ, **env_extra}, log_file)


class RayBackend:
    """Submits command steps as Ray tasks and waits for them (`pipeline.execute.run`'s ``ray`` executor).

    Args:
        p: the pipeline (its models' ``resources`` and devices).
        address: the cluster to join (``auto``, ``HOST:6379``); None starts Ray on this machine.
        num_cpus: with no ``address``, the CPUs Ray may use here (default: ``os.cpu_count()``).

    Raises:
        PipelineError: if Ray is missing or cannot start or join the cluster.
    """

    capacity = 1 << 30  # Ray queues what does not fit

    def __init__(self, p: Pipeline, address: str | None = None, num_cpus: int | None = None) -> None:
        ray = self.ray = _ray()
        self.owned = not ray.is_initialized()
        if self.owned:
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = num_cpus or os.cpu_count() or 1
            try:
                ray.init(**kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise PipelineError(f"--executor ray: cannot start {where}: {e}") from None
        self.cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
        self.devices = {m.name: str(m.resolved.get("device", "auto")) for m in [*p.models, *([p.gate] if p.gate else [])]}
        self._task = ray.remote(run_step_task)

    def resources(self, step: Step) -> dict[str, float]:
        """The Ray resources of ``step``: its ``resources`` over the defaults (see the module)."""
        res = dict(step.resources)
        cpus = res.get("cpus", DEFAULT_CPUS)
        gpus = res.get("gpus")
        if gpus is None:
            model = step.name.split(":", 1)[1].split("@")[0] if ":" in step.name else ""
            device = self.devices.get(model)
            uses_gpu = step.name.startswith(("train:", "predict:", "predict_test:")) and device not in (None, "cpu")
            gpus = 1.0 if uses_gpu and self.cluster_gpus > 0 else 0.0
        out = {"num_cpus": cpus, "num_gpus": gpus}
        if "memory_gb" in res:
            out["memory"] = res["memory_gb"] * 1024**3
        return out

    def submit(self, step: Step, argv: list[str], log_path: Path | None) -> Any:
        opts = self.resources(step)
        extra = {**STEP_ENV, "PYTHONPATH": str(REPO)}
        if opts["num_gpus"] == 0:
            extra["CUDA_VISIBLE_DEVICES"] = ""  # a step that asked for no GPU uses none
        log.debug("submitting %s with %s", step.name, opts)
        return self._task.options(name=step.name, max_retries=0, **opts).remote(
            argv, os.getcwd(), extra, None if log_path is None else str(log_path)
        )

    def wait(self, handles: list[Any]) -> list[tuple[Any, CommandResult | BaseException]]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        out: list[tuple[Any, CommandResult | BaseException]] = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref)))
            except Exception as e:  # a task that raised (RayTaskError) or whose worker died
                out.append((ref, e))
        return out

    def cancel(self, handles: list[Any]) -> None:
        for ref in handles:
            try:
                self.ray.cancel(ref)  # a KeyboardInterrupt in the task, which stops its command
            except Exception as e:  # already finished, or the cluster is gone
                log.debug("cancel %s: %s", ref, e)

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()
