"""Run as a script: start one command, wait for it, print its wall time and resource usage.

Peak RSS needs a small parent: on exec Linux records the old address space's high-water mark
as the child's own, and with vfork that is the parent's. Started with `python -S -I`, this
script is a parent of a few MB, where the benchmark process would add tens of MB to every
child. It imports little for the same reason.
"""

import os
import sys
import time


def main() -> None:
    cmd = sys.argv[1:]
    devnull = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
    start = time.perf_counter()
    pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=devnull)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    # Linux: ru_maxrss in KiB, ru_oublock in 512-byte blocks.
    print(wall, os.waitstatus_to_exitcode(status), ru.ru_maxrss * 1024, ru.ru_oublock * 512)


if __name__ == "__main__":
    main()
