"""Ray job entry point: ``python jobs/train_classifier.py [--config YAML] [key=value ...]``.

Trains the CNN-RNN style/genre/artist classifier with Ray Train (TorchTrainer, N workers; GPU/NCCL
when the cluster has GPUs, else CPU/gloo). Checkpoints, history.jsonl and summary.json go to out=; a
rerun resumes from checkpoints/last.pt.
Inside ``ray job submit`` RAY_ADDRESS is set and the job attaches to that cluster; run directly,
it starts a local Ray. Exit code 0 on success, non-zero with a one-line reason on failure.
"""
import sys

from artextract.cli import main as cli_main


def main(argv: list[str]) -> int:
    """Run ``artextract train classifier`` with the given config/flags/overrides."""
    return cli_main(["train", "classifier", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
