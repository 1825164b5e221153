"""`python -m flows.training --serve --max-jobs N --idle-seconds S --warm MODULES`: the training
worker process (started by `flows.training.worker.TrainingWorker`, never by hand)."""

import argparse
import sys

from flows.training.worker import serve

parser = argparse.ArgumentParser(prog="python -m flows.training")
parser.add_argument("--serve", action="store_true", required=True)
parser.add_argument("--max-jobs", type=int, required=True)
parser.add_argument("--idle-seconds", type=float, required=True)
parser.add_argument("--warm", default="", help="modules to import before the first job")
args = parser.parse_args()
sys.exit(
    serve(
        max_jobs=args.max_jobs,
        idle_seconds=args.idle_seconds,
        warm_imports=[m for m in args.warm.split(",") if m],
    )
)
