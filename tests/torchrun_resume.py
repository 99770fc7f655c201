"""Launched by ``test_training.py`` under torchrun: in each process, the training command the way a user types
it, three times (one launch, so that the processes start once): 6 steps into one folder, ``--resume`` there to
8, and 8 steps uninterrupted into another folder.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/torchrun_resume.py RESUMED WHOLE ARGS...
"""

import sys

from ddpm_lib import train


def main(argv: list[str]) -> int:
    resumed, whole, *args = argv
    for run in (
        [*args, "--max-steps", "6", "--out", resumed],
        [*args, "--max-steps", "8", "--out", resumed, "--resume"],
        [*args, "--max-steps", "8", "--out", whole],
    ):
        status = train.main(run)
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
