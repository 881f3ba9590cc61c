"""``artextract serve`` schema: the visual-search web server (artextract.serve)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from artextract.config.core import OptUri
from artextract.config.jobs import DecodeConfig, FacesConfig, QueryOptions

__all__ = ["ServeConfig"]


class ServeConfig(QueryOptions):
    """``artextract serve``: JSON API + search page over a published index."""

    host: str = Field("127.0.0.1", description="bind address; 127.0.0.1 keeps the server local")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port)")
    faces: OptUri = Field(None, description="preprocess output URI (faces/, images/): boxes, crops, poses; "
                              "None = discovered (reindex snapshot deltas, or the preprocess run in the index's lineage)")
    manifest: OptUri = Field(None, description="ingest manifest URI: title, artist, date, IIIF urls; "
                                 "None = discovered (reindex snapshot, or the manifest in the index's lineage)")
    reports: OptUri = Field(None, description="directory of HTML run reports served under /reports/; "
                                "None = discovered next to a demo index")
    k: int = Field(12, ge=1, le=1000, description="results per page by default")
    max_k: int = Field(200, ge=1, le=10_000, description="deepest result (offset + limit) a query may page to")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="uploads larger than this get 413")
    upload_decodes: int = Field(2, ge=1, description="uploads decoded at once (each may take a few hundred MB "
                                "at decode.max_pixels); more wait up to upload_wait_s, then get 503")
    upload_wait_s: float = Field(30.0, ge=0, description="how long an upload waits for a decode slot")
    upload_cache: int = Field(64, ge=1, description="uploaded queries kept in memory for follow-up searches")
    reload_s: float = Field(5.0, ge=0, description="check CURRENT at most this often; a new version is loaded "
                            "without a restart")
    reload_grace_s: float = Field(60.0, ge=0, description="after a reload the old version stays open this long, "
                                  "so requests that started on it finish (its Ray shard actors are then closed)")
    parallel: Literal["local", "ray"] = Field("local", description="shards in this process, or one Ray actor each")
    decode: DecodeConfig = Field(DecodeConfig(max_pixels=50_000_000), description="upload decoding limits")
    detect: FacesConfig = Field(FacesConfig(device="cpu"), description="face detection on uploads (detect.device "
                                "also places the upload embedding model; auto = a GPU when present)")
    allowed_hosts: list[str] | None = Field(None, description="Host headers the server answers (others get 400, "
                                            "so a DNS-rebinding page cannot script it); None = the loopback names "
                                            "when bound to loopback, any when bound elsewhere")
    log_level: str = Field("info", description="uvicorn log level")
