"""Fault injection for the reliability tests (`tests/faults/`): named points in the training code
where a test can make the process die, stall or fail, chosen by one environment variable:

    MEGABYTE_FAULT_INJECT="POINT[@STEP]=ACTION[,POINT[@STEP]=ACTION...]"

    checkpoint.model@6=kill        SIGKILL this process after writing step 6's model files
    checkpoint.start=sleep:3       stall 3 s at the start of every checkpoint save
    checkpoint.optimizer=ENOSPC    fail the write as if the disk were full (any errno name)
    loss@5=nan                     make step 5's loss NaN
    loss@30=spike:4                make step 30's loss 4 times larger (a loss spike)

Points (in the order a save passes them): `checkpoint.start` (temporary directory made),
`checkpoint.model`, `checkpoint.trainer_state`, `checkpoint.optimizer` (files written),
`checkpoint.renamed` (directory in place, `latest` not yet updated), `checkpoint.latest`
(`latest` updated, old checkpoints not yet pruned), `checkpoint.prune` (an old checkpoint moved
aside, not yet deleted); and `loss`, once per training step. Without the variable (always,
outside the tests) a point costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time

ENV = "MEGABYTE_FAULT_INJECT"


def inject(point: str, step: int | None = None) -> str | None:
    """Act on the faults set for `point` (at `step`): kill, sleep or raise OSError here; return any
    other action (e.g. "nan") for the caller to carry out, or None."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    for item in spec.split(","):
        where, _, action = item.strip().partition("=")
        name, _, at = where.partition("@")
        if name != point or (at and (step is None or int(at) != step)):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action.startswith("sleep:"):
            time.sleep(float(action[len("sleep:"):]))
        elif action.startswith("E") and hasattr(errno, action):
            code = getattr(errno, action)
            raise OSError(code, f"{os.strerror(code)} (injected by {ENV})")
        else:
            return action
    return None
