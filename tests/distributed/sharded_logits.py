"""`megabyte ARGS` as torchrun runs it (then clean_exit.py's report), with the FSDP2 model's
logits on a fixed batch written after every checkpoint by rank 0, as
RUN/logits-step-NNNNNNNN.safetensors: what `megabyte.load` must give from the shards. The extra
forward (eval mode, no_grad, every rank) changes nothing of the training trajectory.

    torchrun ... tests/distributed/sharded_logits.py train --data D --out R --parallel fsdp ...
"""

from __future__ import annotations

import sys

import torch

from megabyte.training.loop import Trainer
from tests.distributed.clean_exit import run_and_report

BATCH = torch.arange(2 * 64).reshape(2, 64) * 7 % 256
"""The fixed input (the tiny preset's context is 64 bytes)."""


def save_and_record_logits(save):
    def save_then_forward(self: Trainer):
        path = save(self)
        self.model.eval()
        with torch.no_grad():  # a sharded forward is a collective: every rank runs it
            logits = self.model(BATCH.to(self.runtime.device)).float().cpu()
        self.model.train()
        if self.runtime.is_main:
            from safetensors.torch import save_file

            name = f"logits-step-{self.state.step:08d}.safetensors"
            save_file({"x": BATCH, "logits": logits}, str(self.run_dir / name))
        return path

    return save_then_forward


if __name__ == "__main__":
    Trainer.save = save_and_record_logits(Trainer.save)
    sys.exit(run_and_report(sys.argv[1:]))
