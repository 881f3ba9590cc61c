"""Ray job entry point: ``python jobs/ingest.py {wikiart|nga|folder} [--config YAML] [key=value ...]``.

Inside ``ray job submit`` RAY_ADDRESS is set and the job attaches to that cluster; run directly,
it uses a local Ray. Exit code 0 on success, non-zero with a one-line reason on failure.
"""
import sys

from artextract.cli import main as cli_main


def main(argv: list[str]) -> int:
    """Run one ingest source; argv is what follows the script name."""
    if not argv or argv[0] not in ("wikiart", "nga", "folder"):
        print("usage: jobs/ingest.py {wikiart|nga|folder} [--config YAML] [key=value ...]", file=sys.stderr)
        return 2
    return cli_main(["ingest", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
