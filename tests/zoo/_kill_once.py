"""`python -m zoo` for tests/zoo/test_distributed.py's fault test: on the first attempt of a torchrun group,
process ZOO_TEST_KILL_RANK kills itself with SIGKILL just before update ZOO_TEST_KILL_AT (a real crash,
mid-run, after that iteration's gradient exchange); later attempts (TORCHELASTIC_RESTART_COUNT > 0) run as is."""
import os
import signal
import sys

from zoo.training import solver
from zoo.cli import main

if os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0" and os.environ.get("RANK") == os.environ["ZOO_TEST_KILL_RANK"]:
    at, update = int(os.environ["ZOO_TEST_KILL_AT"]), solver.CaffeSolver.apply_update

    def apply_update(self):
        if self.iter == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return update(self)

    solver.CaffeSolver.apply_update = apply_update

sys.exit(main())
