"""The training process (never started by hand):

- `python -m flows.training --serve --max-jobs N --idle-seconds S --warm MODULES`: a flow's
  child, jobs on stdin (`flows.training.worker.TrainingWorker`);
- `python -m flows.training --listen SOCKET --owner PID ...`: a `pricecast worker`'s resident
  process, jobs from one flow run at a time over a Unix socket (`flows.training.resident`).
"""

import argparse
import sys
from pathlib import Path

parser = argparse.ArgumentParser(prog="python -m flows.training")
mode = parser.add_mutually_exclusive_group(required=True)
mode.add_argument("--serve", action="store_true", help="jobs on stdin, answers on stdout")
mode.add_argument("--listen", type=Path, metavar="SOCKET", help="jobs over a Unix socket")
parser.add_argument("--owner", type=int, default=0, help="with --listen: the worker's pid")
parser.add_argument("--max-jobs", type=int, required=True)
parser.add_argument("--idle-seconds", type=float, required=True)
parser.add_argument("--warm", default="", help="modules to import before the first job")
args = parser.parse_args()
warm = [m for m in args.warm.split(",") if m]
if args.listen is not None:
    from flows.training.resident import listen

    code = listen(
        args.listen,
        owner=args.owner,
        max_jobs=args.max_jobs,
        idle_seconds=args.idle_seconds,
        warm_imports=warm,
    )
else:
    from flows.training.worker import serve

    code = serve(max_jobs=args.max_jobs, idle_seconds=args.idle_seconds, warm_imports=warm)
sys.exit(code)
