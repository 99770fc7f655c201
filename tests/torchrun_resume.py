"""Launched by ``test_training.py`` under torchrun. In each process, the training engine of ``python -m
ddpm_lib.train`` (the command line's config, one process group for all three runs): 6 steps into one folder, a
new trainer that resumes there to 8, and 8 steps uninterrupted into another folder.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/torchrun_resume.py RESUMED WHOLE ARGS...
"""

import sys

import torch.distributed as dist

from ddpm_lib import train
from ddpm_lib.training import Trainer


def main(argv: list[str]) -> int:
    resumed, whole, *args = argv
    config = train.config_from_args(
        train.build_parser().parse_args([*args, "--max-steps", "8", "--out", resumed])
    )
    first = Trainer(config, resumed, progress=False)
    if first.is_main:
        print(first.describe(), flush=True)
    first.fit(max_steps=6)
    again = Trainer(config, resumed, resume=True, progress=False)
    if again.is_main:
        print(f"resumed at step {again.step}", flush=True)
    again.fit()
    Trainer(config, whole, progress=False).fit()
    dist.barrier()  # leave the process group together: gloo aborts a process that exits inside one
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
