"""Running a piece of a test in a forked child: for what must not touch the test process itself
(dropping privileges, resource limits). The child has the parent's modules and state, no exec needed."""

import os
import traceback
from collections.abc import Callable


def in_child(body: Callable[[], bytes]) -> bytes:
    """What `body` returns in a forked child; its exception, if any, fails the caller's test."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and its exit status
        status = 1
        try:
            os.write(write_end, body())
            status = 0
        except BaseException:
            os.write(write_end, traceback.format_exc().encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        reported = reader.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, reported.decode(errors="replace")
    return reported
