"""python -m pipeline run CONFIG: synthetic or real data → COCO → detectors + gate → fusions → leaderboard → submission.

  python -m pipeline run configs/pipelines/demo.yaml            # what `make demo` runs
  python -m pipeline run configs/pipelines/demo.yaml --force    # redo every step
  python -m pipeline run configs/pipelines/demo.yaml --force train:yolov8n_cpu
  python -m pipeline run configs/pipelines/vinbig.yaml          # real data, GPU schedules
  python -m pipeline run configs/pipelines/rsna.yaml            # RSNA, 5 folds, test-set submission
  python -m pipeline plan configs/pipelines/demo.yaml           # list the steps and what each writes

Each step is one of the project's commands: a line says when it starts and when it ends; the
command's own output goes to WORK_DIR/logs/STEP.log (-v shows it, and the command lines, here
instead). A step whose outputs exist is skipped on a re-run. --set KEY=VALUE overrides a key of
every model config (e.g. --set device=cpu, --set schedule.epochs=1). With `cv:` every model is
trained once per fold and scored out of fold; with `test:` submission.csv is the unlabelled test
set's (see pipeline/config.py).
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
        if name == "run":
            p.add_argument(
                "--force",
                nargs="*",
                metavar="STEP",
                help="redo steps whose outputs exist: all of them, or those named (e.g. train, fuse:wbf)",
            )
            p.add_argument("--only", nargs="+", default=[], metavar="STEP", help="run only these steps")
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

        for k, step in enumerate(plan(p), 1):
            what = shlex.join(step.command) if step.command else "(in process)"
            print(f"[{k}] {step.name}: {what}\n      writes {', '.join(str(o) for o in step.outputs)}")
            if step.settings is not None:
                given = step.settings.settings.to_dict().items()
                values = ", ".join(f"{key} {val}" for key, val in given if val is not None)
                print(f"      reads {step.settings.path}, written first: {values}")
        return 0
    from pipeline.execute import run

    t0 = time.perf_counter()
    force = True if args.force == [] else (args.force or False)
    # each command's own output goes to work_dir/logs/STEP.log, here with -v
    run(p, force=force, only=args.only, on_event=_printer(args.quiet), step_logs=not args.verbose)
    if not args.quiet:
        total = time.perf_counter() - t0
        print(f"pipeline finished in {total:.0f} s; report: {p.work_dir / 'report' / 'index.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
