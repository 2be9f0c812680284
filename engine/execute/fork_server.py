"""Imported by the fork server that local workers come from, and nowhere else
(engine/cli/entry.py preloads it there).

When the command exits, the server sees its pipe close and would tear down every module
it imported: 0.25 s during which anything reading the command's output through a pipe
(`| tee`, a benchmark) waits for end of file. It exits at once instead. Its workers are
not affected: multiprocessing ends each forked child with os._exit, before atexit.
"""

import atexit
import os

atexit.register(os._exit, 0)
