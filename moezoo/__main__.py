"""``python -m moezoo ...``: the ``moezoo`` command (what Lightning's launcher re-runs for each extra process)."""

from moezoo.cli import main

if __name__ == "__main__":
    main()
