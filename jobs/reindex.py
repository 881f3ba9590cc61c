"""Ray job entry point: ``python jobs/reindex.py --collection URI --index URI [--config YAML] [key=value ...]``.

Diffs the collection against the snapshot of the published index version, preprocesses and embeds
only the new and changed images (Ray Data, on the cluster of ``RAY_ADDRESS`` inside ``ray job
submit``), updates the affected shards and publishes a new version. Exit 0 also when nothing
changed (the summary says so); exit 1 with one line when the index is locked by another run.
"""
import sys

from artextract.cli import main as cli_main


def main(argv: list[str]) -> int:
    """Run ``artextract reindex`` with the given config/flags/overrides."""
    return cli_main(["reindex", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
