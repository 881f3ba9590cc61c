"""Ray job entry point: ``python jobs/embed_collection.py [--config YAML] [--model SPEC --input URI --out URI] [key=value ...]``.

Embeds the face crops and/or whole paintings of a preprocess output into ``part-*.parquet``
embedding shards for ``artextract index build``. Inside ``ray job submit`` RAY_ADDRESS is set and
the job attaches to that cluster (embedding actors take one GPU each when the cluster has GPUs);
run directly, it uses a local Ray. Exit code 0 on success, non-zero with a one-line reason on failure.
"""
import sys

from artextract.cli import main as cli_main


def main(argv: list[str]) -> int:
    """Run ``artextract embed`` with the given config/flags/overrides."""
    return cli_main(["embed", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
