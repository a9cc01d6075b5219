"""``python -m trainkeep``: the same as the ``trainkeep`` command."""

from __future__ import annotations

from trainkeep.cli import main

if __name__ == "__main__":
    main()
