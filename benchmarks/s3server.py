"""A local S3 endpoint for the benchmark: moto's server over real HTTP on 127.0.0.1, in a
background thread of the harness, with fake credentials that only this server accepts."""
from __future__ import annotations

import logging
import socket
from pathlib import Path

# Fake credentials for the local moto server only (never real AWS credentials).
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIABENCHARTEXTRACT1",
    "AWS_SECRET_ACCESS_KEY": "artextract-bench-fake-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """``with LocalS3() as s3: s3.upload(dir, bucket, prefix)``; ``s3.endpoint`` and ``s3.env``
    are what a subprocess needs to read the bucket through the standard AWS credential chain."""

    def __init__(self) -> None:
        self.endpoint = ""
        self.env = dict(FAKE_ENV)
        self._server = None

    def __enter__(self) -> "LocalS3":
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:  # moto[server] is a dev dependency
            raise RuntimeError("the S3 benchmark needs moto[server] (pip install -e '.[dev]')") from exc
        # werkzeug logs every request to stderr: thousands of lines that would bury the results.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        port = _free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def upload(self, local: Path, bucket: str, prefix: str) -> tuple[str, int]:
        """Copy every non-hidden file under ``local`` to ``s3://bucket/prefix/``; returns (URI, count)."""
        s3 = self.client()
        s3.create_bucket(Bucket=bucket)
        n = 0
        for path in sorted(local.rglob("*")):
            rel = path.relative_to(local)
            if path.is_file() and not any(p.startswith(".") for p in rel.parts):
                s3.upload_file(str(path), bucket, f"{prefix}/{rel.as_posix()}")
                n += 1
        return f"s3://{bucket}/{prefix}", n
