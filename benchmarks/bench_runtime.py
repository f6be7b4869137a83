"""End-to-end runtime benchmark; see lowbit.bench (also `lowbit bench --run`)."""
import sys

from lowbit.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
