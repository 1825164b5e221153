"""`python -m flows.training --serve MAX_JOBS IDLE_SECONDS`: the training worker process."""

import sys

from flows.training.worker import main

sys.exit(main())
