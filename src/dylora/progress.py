"""Progress bars: live on a terminal, one line every 30 s in logs and CI."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def bar(iterable=None, *, total: int | None = None, desc: str, enabled: bool = True, initial: int = 0) -> tqdm:
    live = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, initial=initial, disable=not enabled,
                mininterval=0.1 if live else 30.0, dynamic_ncols=True)
