"""Schema of ``artextract reindex``: a collection (folder or bucket) kept in sync with its index."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from artextract.config.core import OptUri, RayConfig, StorageConfig, Strict, Uri
from artextract.config.jobs import (DecodeConfig, EmbedResources, FacesConfig, IndexTypeOptions, IngestFolderConfig,
                                    PreprocessResources)


class ReindexPreprocessConfig(Strict):
    """The preprocess settings of the changed images (manifest/out are the job's own)."""

    shard_rows: int = Field(64, ge=1)
    decode: DecodeConfig = DecodeConfig()
    faces: FacesConfig = FacesConfig()
    resources: PreprocessResources = PreprocessResources()
    detector_actors: int = Field(0, ge=0, description="as preprocess detector_actors")
    torch_threads: int = Field(1, ge=1)


class ReindexEmbedConfig(Strict):
    """The embedding model and settings; they must match the ones the index was built with."""

    model: Uri = Field("untrained:resnet18", description="checkpoint URI or untrained:/imagenet:<backbone>")
    what: Literal["faces", "images", "both"] = "faces"
    image_size: int = Field(160, ge=16)
    dim: int = Field(256, ge=1)
    seed: int = 0
    batch_size: int = Field(32, ge=1)
    shard_rows: int = Field(4096, ge=1)
    resources: EmbedResources = EmbedResources()
    actors: int = Field(0, ge=0, description="as embed actors")
    torch_threads: int = Field(1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ReindexIndexConfig(IndexTypeOptions):
    """Index settings used when the index is (re)built from scratch; updates keep the built ones."""

    shards: int = Field(4, ge=1)
    parallel: Literal["local", "ray"] = "local"
    seed: int = 0


class ReindexConfig(Strict):
    """``artextract reindex``: list the collection, diff it against the snapshot stored with the
    published index version (new / changed / deleted), preprocess and embed only what changed,
    update the affected shards and publish a new version. The first run (no index yet) or
    ``rebuild=true`` processes the whole collection and builds the index."""

    collection: Uri = Field("", description="folder or s3:// prefix of the collection's images")
    index: Uri = Field("", description="index root URI (CURRENT, LOCK, versions/)")
    work: OptUri = Field(None, description="where the per-change preprocess/embedding outputs go; "
                             "default <index>/work")
    extensions: tuple[str, ...] = IngestFolderConfig().extensions
    include_all_files: bool = False
    probe_dimensions: bool = True
    preprocess: ReindexPreprocessConfig = ReindexPreprocessConfig()
    embed: ReindexEmbedConfig = ReindexEmbedConfig()
    build: ReindexIndexConfig = ReindexIndexConfig()
    rebuild: bool = Field(False, description="process the whole collection and build a fresh index")
    keep: int = Field(3, ge=1, description="index versions kept (the published one is never pruned; "
                      "older versions whose base shards a kept version still uses stay too)")
    compact_ratio: float = Field(0.1, ge=0, description="an update writes a shard's changes as a delta "
                                 "segment + tombstones until they exceed this fraction of its base, "
                                 "then rewrites (compacts) that shard; 0 always compacts")
    compact: bool = Field(False, description="compact every shard that has a delta or tombstones")
    force_lock: bool = Field(False, description="break a LOCK whose lease expired (its writer crashed and "
                             "stopped renewing it)")
    lock_lease_s: float = Field(600.0, gt=0, description="lease of our LOCK, renewed by a heartbeat every quarter "
                                "of it while the run works; another writer may break it only once it runs out")
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()


class IndexRollbackConfig(Strict):
    """``artextract index rollback``: point CURRENT back at an older kept version."""

    index: Uri = Field("", description="index root URI")
    version: int | None = Field(None, ge=1, description="the kept version to serve")
    force_lock: bool = False
    storage: StorageConfig = StorageConfig()


__all__ = ["ReindexConfig", "IndexRollbackConfig", "ReindexPreprocessConfig", "ReindexEmbedConfig", "ReindexIndexConfig"]
