"""End-to-end runtime benchmark; see lowbit.runtime.bench (also `lowbit bench --run`)."""
import sys

from lowbit.runtime.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
