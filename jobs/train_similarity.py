"""Ray job entry point: ``python jobs/train_similarity.py [--config YAML] [key=value ...]``.

Trains the Siamese/triplet embedding model on face crops (or whole paintings) with Ray Train;
embeddings are all-gathered across workers before mining. Writes checkpoints/ and model.pt, which
artextract embed --model takes.
Inside ``ray job submit`` RAY_ADDRESS is set and the job attaches to that cluster; run directly,
it starts a local Ray. Exit code 0 on success, non-zero with a one-line reason on failure.
"""
import sys

from artextract.cli import main as cli_main


def main(argv: list[str]) -> int:
    """Run ``artextract train similarity`` with the given config/flags/overrides."""
    return cli_main(["train", "similarity", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
