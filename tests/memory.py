"""Peak memory of a piece of code run in a fresh Python process.

The child imports what it needs, resets its peak-RSS counter (`/proc/self/clear_refs`),
runs the code, and reports how far its resident set grew at the peak (VmHWM after the
reset, less VmRSS before it) and what the code printed on its last line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

_CHILD = """
import json, sys
def _kib(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)
{setup}
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
_before = _kib('VmRSS:')
try:
    _result = repr(({code}))
except Exception as exc:
    _result = type(exc).__name__ + ': ' + str(exc)
print(json.dumps({{"grew_mb": (_kib('VmHWM:') - _before) / 1024, "result": _result}}))
"""


def peak_growth(setup: str, code: str, cwd: Path | None = None) -> tuple[float, str]:
    """(MB the child's RSS grew to at its peak while running `code`, repr of its result or
    `ExceptionName: message`)."""
    script = _CHILD.format(setup=textwrap.dedent(setup), code=code)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd or Path(__file__).resolve().parents[1],
        timeout=600,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return float(report["grew_mb"]), str(report["result"])
