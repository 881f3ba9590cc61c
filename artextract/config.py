"""Typed job configs: defaults live in the pydantic schemas, a YAML file overrides them, and
``key=value`` arguments (dotted keys, YAML-typed values) override both. Unknown keys and wrong
types are rejected with a message naming the key. The resolved config is saved beside outputs.
"""
from __future__ import annotations

import copy
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(Strict):
    """Object-storage settings. Credentials are NOT configured here: they come from the AWS chain."""

    s3_endpoint: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (MinIO/Ceph)")
    s3_region: str | None = None
    s3_anonymous: bool = False
    s3_max_attempts: int = Field(6, ge=1, description="botocore-style standard retries for S3 requests")
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)
    http_retries: int = Field(4, ge=0, description="retries with backoff for http(s) reads/downloads")
    http_backoff_s: float = Field(0.5, ge=0)
    http_timeout_s: float = Field(30.0, gt=0)


class RayConfig(Strict):
    """How the job attaches to Ray: address=None starts (or reuses) a local Ray."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all)")


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
    """MTCNN face detection and the stored aligned crops."""

    enabled: bool = True
    min_prob: float = Field(0.92, ge=0, le=1, description="faces below this MTCNN probability are dropped")
    # MTCNN's own default; 24 px lost 6% of the naive loop's faces on NGA at no measurable speed-up.
    min_face_px: int = Field(20, ge=8, description="MTCNN min_face_size at detection resolution")
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    crop_size: int = Field(160, ge=16, description="side of the aligned face crop (px)")
    crop_margin: float = Field(0.35, ge=0, le=2, description="context around the 5-point template")
    max_faces: int = Field(64, ge=1, description="keep at most this many faces per image (highest prob)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int | None = Field(None, ge=1, description="images per detector call; None = 1 on CPU "
                                   "(sizes differ, small units balance actors best), 16 on GPU")


class PreprocessConfig(Strict):
    """``artextract preprocess``: manifest -> images / faces / quarantine parquet shards."""

    manifest: str = ""
    out: str = ""
    shard_rows: int = Field(64, ge=1, description="manifest rows per output shard")
    decode: DecodeConfig = DecodeConfig()
    faces: FacesConfig = FacesConfig()
    decode_batch: int = Field(4, ge=1)
    decode_cpus: float = Field(0.25, gt=0, description="Ray CPUs per decode task")
    detector_actors: int = Field(0, ge=0, description="actor pool size; 0 = one per GPU, else as many as "
                                 "the CPUs hold after one decode actor")
    detector_cpus: float = Field(0.75, gt=0, description="Ray CPUs per detector actor")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per detector actor")
    limit: int | None = Field(None, ge=1, description="process only the first N manifest rows (by image_id)")
    overwrite: bool = False
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()


class IngestWikiartConfig(Strict):
    """``artextract ingest wikiart``: ArtGAN split files + image tree -> manifest."""

    splits: str = ""
    images: str = ""
    out: str = ""
    probe_dimensions: bool = True
    shard_rows: int = Field(50_000, ge=1)
    storage: StorageConfig = StorageConfig()


class DownloadConfig(Strict):
    """Bounded-concurrency image download with retries; resumable."""

    enabled: bool = False
    images_out: str = ""
    concurrency: int = Field(8, ge=1, le=128)
    max_side: int | None = Field(None, ge=64, description="IIIF bounded size (!n,n); None = full image")
    preflight_timeout_s: float = Field(5.0, gt=0)


class IngestNgaConfig(Strict):
    """``artextract ingest nga``: NGA open-data CSVs -> manifest (+ optional download)."""

    objects: str = ""
    published_images: str = ""
    out: str = ""
    classification: str | None = None
    iiif_bounded: int = Field(800, ge=64, description="bounded IIIF size for the iiif_bounded_url column")
    download: DownloadConfig = DownloadConfig()
    shard_rows: int = Field(50_000, ge=1)
    storage: StorageConfig = StorageConfig()


class IngestFolderConfig(Strict):
    """``artextract ingest folder``: any folder or bucket of images -> manifest."""

    images: str = ""
    out: str = ""
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")
    include_all_files: bool = Field(False, description="also list files with other extensions (they will be quarantined)")
    probe_dimensions: bool = True
    shard_rows: int = Field(50_000, ge=1)
    storage: StorageConfig = StorageConfig()


class DemoConfig(Strict):
    """``artextract demo``: ingest + preprocess over an embedded sample collection (offline)."""

    out: str = "runs/demo"
    images: str | None = Field(None, description="your own folder/bucket; default: the generated sample")
    preprocess: PreprocessConfig = PreprocessConfig(shard_rows=8)
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()


C = TypeVar("C", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override that does not fit its schema; the message names the key."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (['a','b','c'], YAML-typed value)."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} is not of the form key=value (dotted keys allowed)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {exc}") from exc
    return key.split("."), value


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        else:
            lines.append(f"key '{key}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def load_config(schema: type[C], path: str | None = None, overrides: list[str] | None = None,
                base: dict | None = None, flags: dict[str, Any] | None = None) -> C:
    """Build a ``schema`` config: defaults <- ``base`` <- YAML at ``path`` <- ``flags`` (dotted
    keys, values taken as given) <- ``overrides`` (``key=value`` strings, YAML-typed values)."""
    data: dict = copy.deepcopy(base) if base else {}
    if path:
        from artextract import storage

        try:
            loaded = yaml.safe_load(storage.read_bytes(path)) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping, not {type(loaded).__name__}")
        data = _deep_merge(data, loaded)
    for key, value in (flags or {}).items():
        _set_path(data, key.split("."), value)
    for item in overrides or []:
        keys, value = parse_override(item)
        _set_path(data, keys, value)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid {schema.__name__}{where}: {_format_errors(exc)}") from None


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def to_yaml(cfg: BaseModel) -> str:
    """The resolved config as YAML (credentials are never part of a config)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_resolved(cfg: BaseModel, out_uri: str, name: str = "config.resolved.yaml") -> str:
    """Write the resolved config beside a job's outputs; returns its URI."""
    from artextract import storage

    uri = storage.join(out_uri, name)
    storage.write_text(uri, to_yaml(cfg), getattr(cfg, "storage", None))
    return uri


class IndexBuildConfig(Strict):
    """``artextract index build``: embedding parquet shards -> a new published version of a sharded
    FAISS index under ``out`` (see artextract/index/versions.py for the layout)."""

    embeddings: str = Field("", description="URI of the embedding shards (part-*.parquet: image_id, "
                            "face_idx, vector, model_version)")
    out: str = Field("", description="index root URI (CURRENT, LOCK, versions/)")
    shards: int = Field(4, ge=1, description="rows go to shard id % shards")
    factory: str | None = Field(None, description="faiss factory string; None = Flat below flat_threshold, "
                                "else IVF{4*sqrt(n)},Flat")
    metric: Literal["ip", "l2"] = "ip"
    parallel: Literal["local", "ray"] = Field("local", description="build shards in-process or as Ray tasks")
    keep: int = Field(3, ge=1, description="versions kept after publishing (the published one never pruned)")
    nprobe: int = Field(16, ge=1, description="default IVF nprobe recorded in index.json")
    flat_threshold: int = Field(50_000, ge=1)
    train_size: int = Field(100_000, ge=1, description="rows sampled to train the IVF quantizer once")
    recall_queries: int = Field(200, ge=1, description="rows used as queries to measure recall@10")
    seed: int = 0
    force_lock: bool = Field(False, description="break a stale LOCK (older than an hour) left by a crash")
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()


def _id_as_str(v: Any) -> Any:
    # ``id=123`` overrides are YAML-typed: image ids are strings even when they look like numbers.
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class SearchConfig(Strict):
    """``artextract search``: k-NN over a published index for a query vector file or an image_id."""

    index: str = Field("", description="index root URI")
    vector: str | None = Field(None, description=".npy URI holding a (d,) or (q, d) float32 query")
    id: Annotated[str | None, BeforeValidator(_id_as_str)] = Field(
        None, description="query by image_id: its stored vectors (all faces unless face_idx is set)")
    face_idx: int | None = Field(None, description="with id: only this face (-1 = whole image)")
    embeddings: str | None = Field(None, description="with id: read the query vectors from these embedding "
                                   "shards instead of reconstructing them from the index")
    k: int = Field(10, ge=1, le=10_000)
    nprobe: int | None = Field(None, ge=1, description="IVF nprobe; None = the one in index.json")
    out: str = Field("", description="output dir: results.json, grid.png, summary.json")
    manifest: str | None = Field(None, description="ingest manifest URI to join metadata by image_id")
    metadata_columns: tuple[str, ...] = (
        "title", "attribution", "artist", "displaydate", "date", "style", "genre",
        "iiif_thumb_url", "iiif_bounded_url", "iiif_full_url", "uri")
    faces: str | None = Field(None, description="preprocess output URI: boxes/crops from faces/, whole "
                              "images from images/ (enables the thumbnail grid)")
    grid: bool = Field(True, description="write grid.png when faces= is given")
    thumb_px: int = Field(128, ge=16, le=1024, description="grid cell side")
    verify: bool = Field(True, description="check shard sha256 against index.json while loading")
    storage: StorageConfig = StorageConfig()


class EmbedConfig(Strict):
    """``artextract embed``: preprocess output (faces/ and/or images/) -> embedding shards for the index."""

    input: str = Field("", description="preprocess output URI (faces/part-*.parquet, images/part-*.parquet)")
    out: str = Field("", description="output URI: part-NNNNN.parquet (image_id, face_idx, vector, "
                                     "model_version, yaw, pitch, roll), _plan.json, summary.json")
    model: str = Field("untrained:resnet18", description="checkpoint URI (artextract.stages.embed."
                                                         "save_checkpoint) or untrained:<backbone> / "
                                                         "imagenet:<backbone>")
    what: Literal["faces", "images", "both"] = Field("faces", description="face crops, whole paintings "
                                                                          "(face_idx -1) or both")
    image_size: int = Field(160, ge=16, description="square side the crops are resized to")
    dim: int = Field(256, ge=1, description="embedding size for untrained:/imagenet: specs (checkpoints "
                                            "carry their own)")
    seed: int = Field(0, description="init seed for untrained:/imagenet: specs (part of model_version)")
    batch_size: int = Field(32, ge=1, description="images per forward pass (and per Ray block)")
    actors: int = Field(0, ge=0, description="embedding actor pool size; 0 = one per GPU, else as many "
                                             "as CPUs allow")
    actor_cpus: float = Field(0.75, gt=0, description="Ray CPUs per embedding actor")
    read_cpus: float = Field(0.25, gt=0, description="Ray CPUs per read task")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per CPU actor")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    shard_rows: int = Field(4096, ge=1, description="vectors per output shard (sorted by image_id, face_idx)")
    overwrite: bool = False
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()


class ClassifierModelConfig(Strict):
    """CNN backbone -> last feature map read as a sequence -> (bi)GRU/LSTM -> pooled -> one head per task."""

    backbone: str = Field("resnet18", description="registry name: resnet18 | resnet34 | resnet50 | efficientnet_b0")
    weights: str = Field("none", description="none (offline default) | imagenet | URI of a torchvision state dict")
    sequence: Literal["rows", "cols", "both"] = Field(
        "both", description="read the feature map top-to-bottom (rows), left-to-right (cols) or both")
    rnn: Literal["gru", "lstm"] = "gru"
    reduce_channels: int | None = Field(256, ge=8, description="1x1 conv before the RNN; None keeps C")
    hidden: int = Field(256, ge=8, description="RNN hidden size per direction")
    layers: int = Field(1, ge=1, le=4)
    bidirectional: bool = True
    pool: Literal["mean", "max", "last"] = Field("mean", description="how RNN outputs become one vector")
    dropout: float = Field(0.2, ge=0, lt=1, description="before each head")


class ClassifierDataConfig(Strict):
    """Where the labelled images come from and how they are split."""

    input: str = Field("", description="preprocess output URI (images/ shards with whole_jpeg and label "
                       "columns) or a manifest URI (images read from its uri column)")
    tasks: tuple[str, ...] = Field(("style", "genre", "artist"), description="label columns, one head each; "
                                   "columns absent from the data are an error")
    min_class_count: int = Field(2, ge=1, description="classes with fewer training rows become 'unknown'")
    split_column: str | None = Field(None, description="use this column's train/val/test values as the split")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="held-out test share (stratified)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="validation share of what is left")
    stratify: str | None = Field("style", description="task to stratify the split by")
    image_size: int = Field(224, ge=32, description="square side fed to the CNN")
    augment: bool = Field(True, description="random resized crop, flip, colour jitter at train time")
    loader: Literal["ray_data", "local"] = Field(
        "ray_data", description="ray_data streams decoded batches to workers; local reads the table in each "
        "worker and slices every global batch deterministically (exact 1-vs-N worker equivalence)")
    decode_cpus: float = Field(0.5, gt=0, description="Ray CPUs per decode/augment task (ray_data loader)")
    limit: int | None = Field(None, ge=1, description="use only the first N rows (by image_id)")
    seed: int = 0


class OptimConfig(Strict):
    """AdamW with a warmed-up cosine / one-cycle / constant schedule."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; None = off")


class ClassifierLossConfig(Strict):
    """Per-head cross-entropy with unknown labels masked."""

    label_smoothing: float = Field(0.1, ge=0, lt=1)
    class_weights: Literal["none", "balanced"] = "none"
    task_weights: dict[str, float] = Field(default_factory=dict, description="per task; missing = 1.0")


class TrainRunConfig(Strict):
    """Epochs, batch, workers and checkpointing shared by the training jobs."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1, description="GLOBAL batch; each of N workers gets batch_size/N")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    time_budget_s: float | None = Field(None, gt=0, description="stop (validate + checkpoint) after this long")
    eval_every: int = Field(1, ge=1, description="validate every N epochs")
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool | None = Field(None, description="None = when the cluster has GPUs")
    amp: bool = Field(True, description="bf16/fp16 autocast on GPU (ignored on CPU)")
    sync_bn: bool = Field(True, description="SyncBatchNorm across workers (GPU/NCCL); on CPU BN stays local")
    freeze_bn: bool = Field(False, description="BatchNorm in eval mode (running stats frozen)")
    seed: int = 0
    resume: bool = Field(True, description="continue from <out>/checkpoints/last.pt when it exists")
    max_failures: int = Field(2, ge=0, description="Ray Train restarts after a worker crash")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads per worker (None = torch default)")
    fault_after_epoch: int | None = Field(None, ge=1, description="chaos testing: crash once after checkpointing "
                                          "this epoch (Ray Train restarts the workers, which resume)")


class ClassifierTrainConfig(Strict):
    """``artextract train classifier``: CNN-RNN multi-task style/genre/artist classifier with Ray Train."""

    out: str = Field("", description="run directory: checkpoints/, history.jsonl, splits.parquet, summary.json")
    model: ClassifierModelConfig = ClassifierModelConfig()
    data: ClassifierDataConfig = ClassifierDataConfig()
    optim: OptimConfig = OptimConfig()
    loss: ClassifierLossConfig = ClassifierLossConfig()
    train: TrainRunConfig = TrainRunConfig()
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()


class EvaluateClassifierConfig(Strict):
    """``artextract evaluate classifier``: metrics, confusion matrices, t-SNE, outliers, HTML report."""

    run: str = Field("", description="training run directory (checkpoints/{best,last}.pt, splits.parquet)")
    checkpoint: Literal["best", "last"] = "best"
    input: str | None = Field(None, description="preprocess output or manifest URI; None = the run's input")
    split: Literal["test", "val", "train", "all"] = Field(
        "test", description="rows of the run's split to evaluate; 'all' for a new collection")
    out: str = ""
    batch_size: int = Field(64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tsne_max_points: int = Field(2000, ge=10)
    outlier_method: Literal["robust_distance", "isolation_forest"] = "robust_distance"
    outlier_top: int = Field(24, ge=1, description="rows in each outlier table / grid")
    mispredict_min_prob: float = Field(0.8, ge=0, le=1, description="confident mis-prediction threshold")
    seed: int = 0
    storage: StorageConfig = StorageConfig()


class NearDuplicateConfig(Strict):
    """Near-duplicate protocol: embed augmented copies of images and find their originals."""

    enabled: bool = False
    model: str = Field("", description="model spec/checkpoint that produced the embeddings")
    images: int = Field(200, ge=2, description="originals sampled from the preprocess output")
    copies: int = Field(2, ge=1, description="augmented copies per original")
    image_size: int = Field(160, ge=16)
    what: Literal["faces", "images"] = "faces"


class EvaluateSimilarityConfig(Strict):
    """``artextract evaluate similarity``: retrieval metrics, cosine distributions, SSIM/RMSE, query grid."""

    embeddings: str = Field("", description="embedding shards (image_id, face_idx, vector, ...)")
    out: str = ""
    labels: str | None = Field(None, description="manifest/preprocess URI holding image_id + label_column")
    label_column: str | None = Field(None, description="e.g. artist or sitter: same label = relevant")
    what: Literal["faces", "images", "all"] = "all"
    ks: tuple[int, ...] = (1, 5, 10)
    preprocess: str | None = Field(None, description="preprocess output: crops for SSIM/RMSE and the grid")
    queries: int = Field(16, ge=1, description="sample queries for SSIM/RMSE and the grid")
    grid_k: int = Field(5, ge=1)
    near_duplicate: NearDuplicateConfig = NearDuplicateConfig()
    seed: int = 0
    storage: StorageConfig = StorageConfig()


class SimilarityModelConfig(Strict):
    """EmbeddingNet: backbone -> pool -> projection head -> unit sphere."""

    backbone: str = Field("resnet50", description="resnet50 | resnet34 | resnet18 | efficientnet_b0")
    weights: str = Field("none", description="none | imagenet | URI of a torchvision state dict")
    dim: int = Field(256, ge=2)
    pool: Literal["avg", "max", "gem"] = "avg"
    hidden: int | None = Field(None, ge=2, description="projection hidden width (None = backbone channels)")


class SimilarityDataConfig(Strict):
    """Which crops, and what makes two of them a positive pair."""

    input: str = Field("", description="preprocess output URI (faces/ crop_jpeg, images/ whole_jpeg)")
    what: Literal["faces", "images"] = "faces"
    positives: Literal["instance", "label"] = Field(
        "instance", description="instance: augmented views of the same crop (reproductions); label: rows "
        "sharing label_column (sitter, artist)")
    label_column: str | None = Field(None, description="with positives=label: column of the images table")
    labels: str | None = Field(None, description="URI holding image_id + label_column (default: input's images/)")
    min_per_label: int = Field(2, ge=1, description="labels with fewer rows are dropped (counted)")
    image_size: int = Field(128, ge=32)
    p: int = Field(8, ge=2, description="labels (or instances) per batch")
    m: int = Field(4, ge=2, description="views per label per batch; global batch = p*m")
    batches_per_epoch: int | None = Field(None, ge=1, description="None = rows // (p*m)")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="images held out for validation (by image)")
    limit: int | None = Field(None, ge=1)
    seed: int = 0


class SimilarityLossConfig(Strict):
    """Metric loss from the registry, optionally with an online miner."""

    name: Literal["triplet", "contrastive"] = "triplet"
    miner: Literal["batch_hard", "semi_hard", "all"] = "batch_hard"
    margin: float = Field(0.2, gt=0)
    distance: Literal["euclidean", "cosine"] = "euclidean"


class SimilarityTrainConfig(Strict):
    """``artextract train similarity``: Siamese/triplet metric learning on faces or paintings."""

    out: str = Field("", description="run directory: checkpoints/, model.pt (embed format), history, summary")
    model: SimilarityModelConfig = SimilarityModelConfig()
    data: SimilarityDataConfig = SimilarityDataConfig()
    loss: SimilarityLossConfig = SimilarityLossConfig()
    optim: OptimConfig = OptimConfig(lr=3e-4, weight_decay=1e-4)
    train: TrainRunConfig = TrainRunConfig(epochs=10)
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
