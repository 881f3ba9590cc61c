"""Ray job entry point: ``python jobs/build_index.py [--config YAML] [--embeddings URI --out URI] [key=value ...]``.

Builds and publishes a new version of the sharded FAISS index. With ``parallel=ray`` the shard
builds run as Ray tasks on the cluster of ``RAY_ADDRESS`` (set inside ``ray job submit``) or
``ray.address``; otherwise on a local Ray. ``parallel=local`` (the default) needs no Ray.
"""
import sys

from artextract.cli import main as cli_main


def main(argv: list[str]) -> int:
    """Run ``artextract index build`` with the given config/flags/overrides."""
    return cli_main(["index", "build", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
