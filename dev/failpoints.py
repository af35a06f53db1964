"""Named crash points, for the tests that prove crash safety: `FAILPOINTS="billing.after_commit=wh_1"` makes the
process kill -9 itself at that point for that key (`*` = any key). Unset in production: one dict lookup."""
from __future__ import annotations

import os
import signal


def _parse(spec: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in spec.split(",") if "=" in item)


_POINTS = _parse(os.environ.get("FAILPOINTS", ""))


def hit(name: str, key: str) -> None:
    if _POINTS and _POINTS.get(name) in (key, "*"):
        os.kill(os.getpid(), signal.SIGKILL)
