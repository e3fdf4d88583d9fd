"""One entry point for every benchmark (``benchmarks/README.md`` says what each measures):

    python -m benchmarks run [--quick | --smoke]        # the CPU suite: every claim as a ratio
    python -m benchmarks gpu [--smoke]                  # on a CUDA machine: throughput, memory, MFU
    python -m benchmarks throughput [--smoke] [...]     # item 1 alone
    python -m benchmarks study-time STORAGE WALL_S      # where a finished study's time went
    python -m benchmarks calibration [--smoke]          # how often the verdict is wrong (numpy only)
    python -m benchmarks sequential [--smoke]           # study.seeds=auto: error, power, seeds saved
    python -m benchmarks pruning [--smoke] [...]        # does a pruner cost the search its winner
    python -m benchmarks replication [--smoke] [...]    # a replicate's evaluation passes against its training
    python -m benchmarks packing [--smoke] [...]        # K search trials in one batch: trials/hour

Each ``--smoke`` runs the whole path on the tiny model in seconds; the test suite runs them all.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: sub-command -> module (imported on use: calibration and sequential never import torch)
COMMANDS = {
    "run": "run",
    "gpu": "gpu",
    "throughput": "throughput",
    "study-time": "study_time",
    "calibration": "calibration",
    "sequential": "sequential",
    "pruning": "pruning",
    "replication": "replication",
    "packing": "packing",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"benchmarks.{COMMANDS[args[0]]}")
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
