"""Schemas of the data jobs: ingest, preprocess, demo, embed, index build and search."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from artextract.config.core import OptUri, RayConfig, Resources, StorageConfig, Strict, Uri


class DecodeConfig(Strict):
    """Decoding and validation of image bytes."""

    max_pixels: int = Field(150_000_000, ge=1, description="decompression-bomb limit (declared width*height)")
    max_bytes: int = Field(512 * 1024 * 1024, ge=1, description="larger files are quarantined unread")
    min_side: int = Field(32, ge=1, description="images with a shorter side are quarantined")
    max_aspect: float = Field(12.0, gt=1, description="long/short side above this is quarantined")
    detect_max_side: int = Field(1024, ge=64, description="long side the image is resized to for detection")
    whole_size: int = Field(384, ge=32, description="long side of the stored whole-image crop for training")
    jpeg_quality: int = Field(90, ge=1, le=100)


class FacesConfig(Strict):
    """Face detection (a detector registry, test-time views, merging into one calibrated score) and
    the stored aligned crops. Measured choices: docs/benchmarks.md, Faces."""

    enabled: bool = True
    detector: Literal["retinaface", "mtcnn", "ensemble"] = Field(
        "retinaface", description="stages/face_detectors.py; ensemble = every detector in faces.members")
    members: list[Literal["retinaface", "mtcnn"]] = Field(
        ["retinaface", "mtcnn"], min_length=1, description="the detectors faces.detector=ensemble merges")
    views: list[Literal["identity", "flip", "half", "grey", "grey-half", "soft-half", "rot+15", "rot-15"]] = Field(
        ["identity", "grey-half"], min_length=1,
        description="test-time views each detector runs on, merged by weighted NMS (stages/face_merge.py)")
    min_prob: float = Field(0.45, ge=0, le=1, description="faces below this calibrated probability are dropped")
    candidate_prob: float = Field(0.2, ge=0, le=1, description="raw detector score a candidate needs to be merged")
    merge_iou: float = Field(0.5, gt=0, le=1, description="candidates overlapping this much are one face")
    nms_iou: float = Field(0.4, gt=0, le=1, description="RetinaFace's own NMS within one view")
    # MTCNN's own default; 24 px lost 6% of the naive loop's faces on NGA at no measurable speed-up.
    min_face_px: int = Field(20, ge=8, description="smallest face side at detection resolution")
    thresholds: tuple[float, float, float] = Field((0.6, 0.7, 0.7), description="MTCNN's P/R/O-Net thresholds")
    crop_size: int = Field(160, ge=16, description="side of the aligned face crop (px)")
    crop_margin: float = Field(0.35, ge=0, le=2, description="context around the 5-point template")
    max_faces: int = Field(64, ge=1, description="keep at most this many faces per image (highest prob)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where MTCNN (mtcnn, ensemble) runs inside its actor: auto = CUDA when torch "
        "sees the GPU the actor was given (preprocess resources.detector.num_gpus), else the CPU; RetinaFace "
        "and the O-Net check always run on the CPU")
    batch_size: int | None = Field(None, ge=1, description="images per detector call; None = 1 on CPU "
                                   "(sizes differ, small units balance actors best), 16 on GPU")


class PreprocessResources(Strict):
    """Per-actor requests of the preprocess graph (artextract.config.Resources)."""

    decode: Resources = Field(Resources(num_cpus=0.25), description="each read+decode actor")
    detector: Resources = Field(Resources(num_cpus=0.75), description="each face-detector actor; num_gpus > 0 "
                                "puts detection on GPU nodes with a decode pool of its own")


class PreprocessConfig(Strict):
    """``artextract preprocess``: manifest -> images / faces / quarantine parquet shards."""

    manifest: Uri = ""
    out: Uri = ""
    shard_rows: int = Field(64, ge=1, description="manifest rows per output shard")
    decode: DecodeConfig = DecodeConfig()
    faces: FacesConfig = FacesConfig()
    decode_batch: int = Field(4, ge=1)
    resources: PreprocessResources = PreprocessResources()
    detector_actors: int = Field(0, ge=0, description="detector actor pool size; 0 = on CPUs as many as the "
                                 "cluster's CPUs hold, on GPUs an autoscaling pool of 1 to the GPUs the "
                                 "cluster has now (at least 1); N = exactly N on CPUs, 1 to N on GPUs")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per detector actor")
    fuse_decode: bool = Field(True, description="detecting on CPUs: read+decode inside the detector actors "
                              "(each decode + detector resources); GPU detectors always get a decode pool of their own")
    limit: int | None = Field(None, ge=1, description="process only the first N manifest rows (by image_id)")
    overwrite: bool = False
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()


class IngestWikiartConfig(Strict):
    """``artextract ingest wikiart``: ArtGAN split files + image tree -> manifest."""

    splits: Uri = ""
    images: Uri = ""
    out: Uri = ""
    probe_dimensions: bool = True
    shard_rows: int = Field(50_000, ge=1)
    storage: StorageConfig = StorageConfig()


class DownloadConfig(Strict):
    """Bounded-concurrency image download with retries; resumable."""

    enabled: bool = False
    images_out: Uri = ""
    concurrency: int = Field(8, ge=1, le=128)
    max_side: int | None = Field(None, ge=64, description="IIIF bounded size (!n,n); None = full image")
    preflight_timeout_s: float = Field(5.0, gt=0)


class IngestNgaConfig(Strict):
    """``artextract ingest nga``: NGA open-data CSVs -> manifest (+ optional download)."""

    objects: Uri = ""
    published_images: Uri = ""
    out: Uri = ""
    classification: str | None = None
    iiif_bounded: int = Field(800, ge=64, description="bounded IIIF size for the iiif_bounded_url column")
    download: DownloadConfig = DownloadConfig()
    shard_rows: int = Field(50_000, ge=1)
    storage: StorageConfig = StorageConfig()


class IngestFolderConfig(Strict):
    """``artextract ingest folder``: any folder or bucket of images -> manifest."""

    images: Uri = ""
    out: Uri = ""
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")
    include_all_files: bool = Field(False, description="also list files with other extensions (they will be quarantined)")
    probe_dimensions: bool = True
    shard_rows: int = Field(50_000, ge=1)
    storage: StorageConfig = StorageConfig()


class DemoConfig(Strict):
    """``artextract demo``: ingest + preprocess over an embedded sample collection (offline)."""

    out: Uri = "runs/demo"
    images: OptUri = Field(None, description="your own folder/bucket; default: the generated sample")
    preprocess: PreprocessConfig = PreprocessConfig(shard_rows=8)
    classifier: bool = Field(True, description="also train a tiny CNN-RNN on a generated labelled collection "
                             "and write its evaluation report")
    classifier_epochs: int = Field(4, ge=1)
    similarity: bool = Field(True, description="also train a tiny face-similarity model, embed the faces, "
                             "build the index and write a query grid")
    similarity_epochs: int = Field(2, ge=1)
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()


class IndexTypeOptions(Strict):
    """How a build chooses the faiss index type and its search parameters (build and reindex)."""

    factory: str | None = Field(None, description="faiss factory string, optionally ending in a re-ranking "
                                "stage ',RFlat' or ',Refine(SQfp16)' (artextract/index/refine.py); None = Flat "
                                "below flat_threshold, IVF{4*sqrt(n)},Flat below compress_threshold, else "
                                "IVF{4*sqrt(n)},PQ{d/2}x4fs,RFlat")
    metric: Literal["ip", "l2"] = "ip"
    nprobe: int | None = Field(None, ge=1, description="IVF nprobe recorded in index.json; None = tuned on the "
                               "recall queries for target_recall")
    k_factor: int | None = Field(None, ge=1, description="with a re-ranking stage: candidates re-scored per "
                                 "result; None = tuned with nprobe")
    target_recall: float = Field(0.95, gt=0, le=1, description="recall@10 the tuning aims at (fastest point "
                                 "reaching it; when none does, the fastest within 0.005 of the best)")
    refine_store: Literal["memory", "disk"] = Field(
        "disk", description="where readers keep the re-ranking codes: memory-mapped from local disk (remote "
        "indexes: a cached local copy in refine_cache) so RAM holds only the compressed codes, or in RAM")
    flat_threshold: int = Field(50_000, ge=1)
    compress_threshold: int = Field(4_000_000, ge=1, description="default factory is compressed from here on")
    train_size: int = Field(100_000, ge=1, description="rows sampled to train the IVF quantizer once")
    recall_queries: int = Field(200, ge=1, description="rows used as queries to measure recall@10")

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of index.build.build_index."""
        return self.model_dump(include={"factory", "metric", "nprobe", "k_factor", "target_recall", "refine_store",
                                        "flat_threshold", "compress_threshold", "train_size", "recall_queries"})


class ReaderOptions(Strict):
    """How a reader loads and searches the shards (search and serve)."""

    nprobe: int | None = Field(None, ge=1, description="IVF nprobe; None = the one in index.json")
    k_factor: int | None = Field(None, ge=1, description="re-ranking candidates per result; None = index.json's")
    refine_store: Literal["memory", "disk"] | None = Field(None, description="override index.json's refine store")
    refine_cache: str | None = Field(None, description="local directory for re-ranking codes of a remote index "
                                     "with refine_store=disk; None = <tmp>/artextract-refine")
    shard_memory_factor: float = Field(2.0, gt=0, description="Ray shard actors request this x their bytes "
                                       "in RAM as Ray memory, so they are placed by memory")
    shard_place_timeout_s: float = Field(900.0, gt=0, description="Ray shard actors not all placed by then "
                                         "fail the load, naming what they asked for (a serve reload needs "
                                         "room for the new version's shards while the old ones still serve)")
    verify: bool = Field(True, description="check shard sha256 against index.json while loading")

    def reader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of IndexReader / RayIndexReader (ray_kwargs: Ray only)."""
        return {"nprobe": self.nprobe, "verify": self.verify, "k_factor": self.k_factor,
                "store": self.refine_store, "cache_dir": self.refine_cache}

    def ray_kwargs(self) -> dict[str, Any]:
        """The RayIndexReader-only keyword arguments."""
        return {"memory_factor": self.shard_memory_factor, "place_timeout_s": self.shard_place_timeout_s}


class IndexBuildConfig(IndexTypeOptions):
    """``artextract index build``: embedding parquet shards -> a new published version of a sharded
    FAISS index under ``out`` (see artextract/index/versions.py for the layout)."""

    embeddings: Uri = Field("", description="URI of the embedding shards (part-*.parquet: image_id, "
                            "face_idx, vector, model_version)")
    out: Uri = Field("", description="index root URI (CURRENT, LOCK, versions/)")
    shards: int = Field(4, ge=1, description="rows go to shard id % shards")
    parallel: Literal["local", "ray"] = Field("local", description="build shards in-process or as Ray tasks")
    keep: int = Field(3, ge=1, description="versions kept after publishing (the published one never pruned)")
    seed: int = 0
    force_lock: bool = Field(False, description="break a LOCK whose lease expired (its writer crashed)")
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()


def _id_as_str(v: Any) -> Any:
    # ``id=123`` overrides are YAML-typed: image ids are strings even when they look like numbers.
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class QueryOptions(ReaderOptions):
    """What search and serve share: the index, how image queries are decoded, detected and embedded,
    pose and copy re-ranking (artextract.search.service); each job adds its own inputs and outputs."""

    index: Uri = Field("", description="index root URI (CURRENT, versions/)")
    model: OptUri = Field(None, description="embedding model of image queries: checkpoint URI or "
                              "untrained:<backbone> spec; None = the model recorded with the index (index.json "
                              "embed, else the embed run in its lineage)")
    decode: DecodeConfig = Field(DecodeConfig(), description="image queries: decoding, as in preprocess")
    detect: FacesConfig = Field(FacesConfig(), description="image queries: face detection and crops; keep "
                                "equal to the preprocess run's faces settings so crops match")
    faces: OptUri = Field(None, description="preprocess output URI: boxes/crops from faces/, whole images "
                              "from images/")
    manifest: OptUri = Field(None, description="ingest manifest URI to join metadata by image_id")
    pose_max_deg: float = Field(20.0, gt=0, description="pose filter threshold (yaw/pitch/roll distance, degrees)")
    pose_weight: float = Field(0.5, ge=0, description="pose rerank penalty per 90 degrees of pose distance")
    pose_oversample: int = Field(4, ge=1, description="fetch k * this many candidates before pose filtering")
    copies_shortlist: int = Field(50, ge=1, le=1000, description="copies: hits fetched and verified per query")
    copies_min_inliers: int = Field(5, ge=3, description="copies: inliers that make a hit the same picture")
    ray_min_vectors: int = Field(1_000_000, ge=1, description="parallel=auto switches to Ray actors here")
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()


class SearchConfig(QueryOptions):
    """``artextract search``: k-NN over a published index for a query vector file, an image_id or an
    image (its detected faces, else the whole painting, embedded with the index's model)."""

    vector: OptUri = Field(None, description=".npy URI holding a (d,) or (q, d) float32 query")
    id: Annotated[str | None, BeforeValidator(_id_as_str)] = Field(
        None, description="query by image_id: its stored vectors (all faces unless face_idx is set)")
    image: OptUri = Field(None, description="query by an image file/URI: each detected face (aligned "
                              "crop as in preprocess), else the whole painting, embedded with model")
    face_idx: int | None = Field(None, description="with id: only this face (-1 = whole image)")
    embeddings: OptUri = Field(None, description="with id: read the query vectors from these embedding "
                                   "shards instead of reconstructing them from the index")
    k: int = Field(10, ge=1, le=10_000)
    out: Uri = Field("", description="output dir: results.json, grid.png, summary.json")
    metadata_columns: tuple[str, ...] = (
        "title", "attribution", "artist", "displaydate", "date", "style", "genre",
        "iiif_thumb_url", "iiif_bounded_url", "iiif_full_url", "uri")
    grid: bool = Field(True, description="write grid.png when faces= is given")
    thumb_px: int = Field(128, ge=16, le=1024, description="grid cell side")
    pose: Literal["off", "filter", "rerank"] = Field(
        "off", description="similar poses: drop hits whose head pose is > pose_max_deg from the query face "
        "(filter) or order by score - pose_weight * distance/90 (rerank); needs faces=")
    copies: bool = Field(False, description="find reproductions of the query picture: re-rank the top "
                         "copies_shortlist hits by geometric verification (SIFT + RANSAC inliers; verified "
                         "hits first); needs faces= for the hits' pixels")
    parallel: Literal["auto", "local", "ray"] = Field(
        "auto", description="shards in this process (local) or one Ray actor per shard (ray); auto = ray "
        "when the index holds at least ray_min_vectors vectors")


class EmbedResources(Strict):
    """Per-task/actor requests of the embed graph (artextract.config.Resources)."""

    read: Resources = Field(Resources(num_cpus=0.25), description="each read task")
    embed: Resources = Field(Resources(num_cpus=0.75), description="each embedding actor; num_gpus > 0 puts "
                             "the model on GPU nodes")


class EmbedConfig(Strict):
    """``artextract embed``: preprocess output (faces/ and/or images/) -> embedding shards for the index."""

    input: Uri = Field("", description="preprocess output URI (faces/part-*.parquet, images/part-*.parquet)")
    out: Uri = Field("", description="output URI: part-NNNNN.parquet (image_id, face_idx, vector, "
                                     "model_version, yaw, pitch, roll), _plan.json, summary.json")
    model: Uri = Field("untrained:resnet18", description="checkpoint URI (artextract.stages.embed."
                                                         "save_checkpoint), untrained:<backbone>, or "
                                                         "imagenet:<backbone>[=<absolute path or s3:// URI of "
                                                         "its torchvision weights>] (pooled ImageNet features)")
    what: Literal["faces", "images", "both"] = Field("faces", description="face crops, whole paintings "
                                                                          "(face_idx -1) or both")
    image_size: int = Field(160, ge=16, description="square side the crops are resized to")
    dim: int = Field(256, ge=1, description="embedding size for untrained: specs (checkpoints "
                                            "carry their own; imagenet: gives the backbone's channels)")
    seed: int = Field(0, description="init seed for untrained: specs (part of model_version)")
    batch_size: int = Field(32, ge=1, description="images per forward pass (and per Ray block)")
    actors: int = Field(0, ge=0, description="embedding actor pool size; 0 = on CPUs as many as the cluster's "
                                             "CPUs hold, on GPUs an autoscaling pool of 1 to the GPUs the "
                                             "cluster has now (at least 1); N = exactly N on CPUs, 1 to N on GPUs")
    resources: EmbedResources = EmbedResources()
    torch_threads: int = Field(1, ge=1, description="intra-op threads per CPU actor")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the model runs inside its actor: auto = CUDA when torch sees the GPU the "
        "actor was given (resources.embed.num_gpus), else the CPU")
    shard_rows: int = Field(4096, ge=1, description="vectors per output shard (sorted by image_id, face_idx)")
    overwrite: bool = False
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
