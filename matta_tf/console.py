"""Quiet native log lines on stderr for the `matta` CLI.

TensorFlow's C++ runtime writes info lines through absl *before* its logging is set up
("All log messages before absl::InitializeLog() ...", "oneDNN custom operations are on",
"Could not find cuda drivers"); `TF_CPP_MIN_LOG_LEVEL` does not reach them, and on a CPU
machine they read like errors. They are written to file descriptor 2 directly, so they can
only be filtered at that level: `filtered_stderr()` points fd 2 at a pipe and a thread
copies every line to the real stderr except absl info/warning lines (`I1125 ...`,
`W1125 ...`) and the pre-initialisation banner. Error and fatal lines (`E...`, `F...`),
Python tracebacks and everything else pass through unchanged, in order.

Example:

```python
with filtered_stderr():
    import tensorflow as tf  # no start-up banner
```
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

# absl's line prefix: severity letter, MMDD, time, thread id, file:line]
NATIVE_INFO_LINE = re.compile(rb"^[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]*\] ")
ABSL_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def is_native_noise(line: bytes) -> bool:
    """True for an absl info/warning line or the absl pre-initialisation banner."""
    return line.rstrip(b"\r\n") == ABSL_BANNER or bool(NATIVE_INFO_LINE.match(line))


def _pump(read_fd: int, out_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        pending = b""
        while True:
            chunk = source.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not is_native_noise(line + b"\n"))
            if kept:
                os.write(out_fd, kept)
        if pending and not is_native_noise(pending):
            os.write(out_fd, pending)


@contextlib.contextmanager
def filtered_stderr():
    """Drops native absl info/warning lines from fd 2 inside the block (see module doc)."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    thread = threading.Thread(target=_pump, args=(read_fd, saved), name="matta-stderr", daemon=True)
    thread.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes our last handle on the pipe's write end in fd 2
        # Child processes that inherited the pipe may keep it open; do not wait for them.
        thread.join(timeout=2.0)
        if not thread.is_alive():
            os.close(saved)
