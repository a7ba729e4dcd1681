"""python -m pipeline run CONFIG: synthetic or real data → COCO → detectors + gate → fusions → leaderboard.

  python -m pipeline run configs/pipelines/demo.yaml            # what `make demo` runs
  python -m pipeline run configs/pipelines/demo.yaml --force    # redo every step
  python -m pipeline run configs/pipelines/demo.yaml --force train:yolov8n_cpu
  python -m pipeline run configs/pipelines/vinbig.yaml          # real data, GPU schedules
  python -m pipeline plan configs/pipelines/demo.yaml           # list the steps and what each writes

Each step is one of the project's commands (printed as it starts); a step whose outputs
exist is skipped on a re-run. --set KEY=VALUE overrides a key of every model config
(e.g. --set device=cpu, --set schedule.epochs=1).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
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
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from adapters.config import ConfigError
    from pipeline.run import PipelineError, load_pipeline, plan, run

    try:
        p = load_pipeline(args.config, args.set, args.work_dir)
        if args.cmd == "plan":
            for k, step in enumerate(plan(p), 1):
                what = shlex.join(step.command) if step.command else "(in process)"
                print(f"[{k}] {step.name}: {what}\n      writes {', '.join(str(o) for o in step.outputs)}")
            return 0
        force = True if args.force == [] else (args.force or False)
        run(p, force=force, only=args.only)
        return 0
    except (PipelineError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
