"""Whole-network runtime benchmark; see lowbit.bench_networks (also `lowbit bench --run networks`)."""
import sys

from lowbit.bench_networks import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
