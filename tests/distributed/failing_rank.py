"""`megabyte train` in which one rank fails at a chosen step: run by the tests under torchrun.

    FAIL_RANK=1 FAIL_STEP=3 FAIL_HOW=raise  torchrun ... tests/distributed/failing_rank.py train ...

FAIL_HOW=raise raises a RuntimeError; FAIL_HOW=stop asks that rank alone to stop after the step
(as SIGTERM does); FAIL_HOW=hang stops answering (sleeps) without exiting,
so only the process group's timeout on the other ranks can end the job. (The hanging rank takes
SIGTERM's default action: with the trainer's graceful SIGTERM handler, torchrun would need its
30 s SIGKILL escalation to end it, which is torchrun's behaviour, not what this test measures.)
"""

from __future__ import annotations

import os
import signal
import sys
import time

from megabyte.training.loop import Trainer
from tests.distributed.clean_exit import run_and_report


def install_fault() -> None:
    rank, step = int(os.environ["FAIL_RANK"]), int(os.environ["FAIL_STEP"])
    how = os.environ.get("FAIL_HOW", "raise")
    if int(os.environ["RANK"]) != rank:
        return
    train_step = Trainer.train_step

    def faulty(self: Trainer) -> None:
        if self.state.step + 1 == step:
            if how == "stop":  # as a signal handler would: finish this step, then stop
                self.stop_requested = "SIGTERM"
                return train_step(self)
            if how == "hang":  # stuck, but not deaf: torchrun's SIGTERM ends it at once (see docs)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                time.sleep(3600)
            raise RuntimeError(f"rank {rank} failed on purpose at step {step}")
        train_step(self)

    Trainer.train_step = faulty


if __name__ == "__main__":
    install_fault()
    sys.exit(run_and_report(sys.argv[1:]))
