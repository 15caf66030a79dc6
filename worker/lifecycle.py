"""Process-wide worker state: whether this worker is shutting down."""

from __future__ import annotations

import threading

# Set when the worker begins a warm shutdown (SIGTERM, or Ctrl-C once): a running job then
# checkpoints and hands itself back to the queue instead of holding the deploy up.
SHUTTING_DOWN = threading.Event()
