"""Ray job entry point: ``python jobs/preprocess.py [--config YAML] [key=value ...]``.

Inside ``ray job submit`` RAY_ADDRESS is set and the Ray Data pipeline runs on that cluster
(detector actors take GPUs when the cluster has them); run directly, it uses a local Ray.
"""
import sys

from artextract.cli import main as cli_main


def main(argv: list[str]) -> int:
    """Run preprocess with the given config/overrides."""
    return cli_main(["preprocess", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
