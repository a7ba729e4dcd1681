"""python -m pipeline run CONFIG: synthetic or real data → COCO → detectors + gate → fusions → leaderboard → submission.

  python -m pipeline run configs/pipelines/demo.yaml            # what `make demo` runs
  python -m pipeline run configs/pipelines/demo.yaml --force    # redo every step
  python -m pipeline run configs/pipelines/demo.yaml --force train:yolov8n_cpu
  python -m pipeline run configs/pipelines/vinbig.yaml          # real data, GPU schedules
  python -m pipeline run configs/pipelines/rsna.yaml            # RSNA, 5 folds, test-set submission
  python -m pipeline run configs/pipelines/vinbig.yaml --executor ray            # steps in parallel, here
  python -m pipeline run configs/pipelines/vinbig.yaml --executor ray --address auto   # on a Ray cluster
  python -m pipeline plan configs/pipelines/demo.yaml           # each step: done, stale (why) or missing

Each step is one of the project's commands: a line says when it starts (and why) and when it
ends; the command's own output, the framework's progress included, goes to WORK_DIR/logs/STEP.log
(-v shows it, and the command lines, here instead). Every step records what it was made from
(WORK_DIR/steps/STEP.json: command, resolved config, input fingerprints, version); a re-run skips
a step only when none of that changed and no step it reads from re-runs, so editing a model config
re-trains that model and redoes what reads its outputs. A killed step is never taken for done; a
killed training resumes from its last checkpoint when re-run with the same inputs. The run ends
with a summary (time per step, what was skipped and why), also in WORK_DIR/summary.json.
--set KEY=VALUE overrides a key of every model config (e.g. --set device=cpu, --set
schedule.epochs=1). With `cv:` every model is trained once per fold and scored out of fold; with
`test:` submission.csv is the unlabelled test set's (see pipeline/config.py).

--executor ray runs each command step as a Ray task with the resources its model entry asks for
(resources: {cpus, gpus, memory_gb}), independent steps at the same time; --address joins a
cluster (`ray start --head` on one machine, `ray start --address=HEAD:6379` on the others; the
work folder must be on storage every node reads and writes at the same path). Ray is optional:
pip install ray.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from core.cli import add_common_flags, run_cli


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, text in (("run", "run the pipeline's steps"), ("plan", "print the steps without running them")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", type=Path, help="pipeline YAML (configs/pipelines/*.yaml)")
        p.add_argument("--work-dir", help="output folder (default: the config's work_dir)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a key of every model config",
        )
        if name == "plan":
            p.add_argument("--commands", action="store_true", help="also list each step's command and files")
        if name == "run":
            p.add_argument(
                "--force",
                nargs="*",
                metavar="STEP",
                help="redo steps that are done: all of them, or those named (e.g. train, fuse:wbf), "
                "and what depends on them",
            )
            p.add_argument("--only", nargs="+", default=[], metavar="STEP", help="run only these steps")
            p.add_argument(
                "--executor",
                choices=("local", "ray"),
                default="local",
                help="local: subprocesses of this process (default); ray: each step a Ray task",
            )
            p.add_argument(
                "--jobs", type=int, default=1, metavar="N", help="local executor: steps run at the same time (1)"
            )
            p.add_argument(
                "--address", help="ray executor: the cluster to join (auto, HOST:6379); default: start Ray here"
            )
            p.add_argument(
                "--ray-cpus", type=int, metavar="N", help="ray executor without --address: CPUs (default: all)"
            )
    return add_common_flags(ap)


def _printer(quiet: bool):
    """The ``on_event`` of `pipeline.execute.run`: a line as each step starts, ends or is skipped, on stdout."""
    from pipeline.execute import describe

    bold = sys.stdout.isatty()

    def show(event) -> None:
        if quiet:
            return
        line = describe(event)
        if bold:
            head = f"[{event.index}/{event.total}] {event.name}"
            line = f"\033[1m{head}\033[0m{line[len(head) :]}"
        print(line, flush=True)
        if event.summary:
            print(event.summary, flush=True)

    return show


def dispatch(args: argparse.Namespace) -> int:
    """Do ``args.cmd`` (``plan`` or ``run``) for the pipeline config ``args.config``."""
    from pipeline.config import load_pipeline

    p = load_pipeline(args.config, args.set, args.work_dir)
    if args.cmd == "plan":
        from pipeline.plan import plan
        from pipeline.records import statuses

        steps = plan(p)
        print(plan_table(statuses(p, steps)))
        if args.commands:
            for k, step in enumerate(steps, 1):
                what = shlex.join(step.command) if step.command else "(in process)"
                print(f"[{k}] {step.name}: {what}\n      writes {', '.join(str(o) for o in step.outputs)}")
                if step.deps:
                    print(f"      after {', '.join(step.deps)}")
                if step.settings is not None:
                    given = step.settings.settings.to_dict().items()
                    values = ", ".join(f"{key} {val}" for key, val in given if val is not None)
                    print(f"      reads {step.settings.path}, written first: {values}")
        return 0
    from core.errors import UserError
    from core.io import read_json
    from pipeline.execute import run, summary_text

    t0 = time.perf_counter()
    force = True if args.force == [] else (args.force or False)
    try:
        # each command's own output goes to work_dir/logs/STEP.log, here with -v
        run(
            p, force=force, only=args.only, on_event=_printer(args.quiet), step_logs=not args.verbose,
            executor=args.executor, jobs=args.jobs, address=args.address, ray_cpus=args.ray_cpus,
        )  # fmt: skip
    except UserError:
        _print_summary(p.work_dir / "summary.json", args.quiet)
        raise
    if not args.quiet:
        print(summary_text(read_json(p.work_dir / "summary.json")))
        total = time.perf_counter() - t0
        print(f"pipeline finished in {total:.0f} s; report: {p.work_dir / 'report' / 'index.html'}")
    return 0


def _print_summary(path: Path, quiet: bool) -> None:
    """Print the summary a failed run left (`pipeline.execute.summary_text`), if it left one."""
    if quiet or not path.is_file():
        return
    from core.io import read_json
    from pipeline.execute import summary_text

    print(summary_text(read_json(path)), flush=True)


def plan_table(rows) -> str:
    """`pipeline.records.statuses` as a table: step, status, why; then the counts."""
    width = max((len(step.name) for step, _, _ in rows), default=4)
    lines = [f"{'step':<{width}}  {'status':<7}  why"]
    lines += [f"{step.name:<{width}}  {status:<7}  {reason}" for step, status, reason in rows]
    counts = {s: sum(st == s for _, st, _ in rows) for s in ("done", "stale", "missing")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
