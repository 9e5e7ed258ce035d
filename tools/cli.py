"""Shared edge for the command-line tools: python-fire, and known errors as one clear line."""
from __future__ import annotations

import sys


def run_cli(fn, known: tuple = ()) -> None:
    """Run ``fn`` under fire; expected failures (and the caller's ``known`` exception types) print
    ``error: ...`` and exit 1 (no traceback); Ctrl-C exits 130 with a hint that the command resumes."""
    import fire

    from pipeline import FormatError
    from pipeline.prepare.convert import OutputError
    from pipeline.prepare.sources import LayoutError

    try:
        fire.Fire(fn)
    except (OutputError, FormatError, LayoutError, ValueError, FileNotFoundError,
            PermissionError, *known) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)
