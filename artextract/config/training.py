"""Schemas of the training and evaluation jobs: classifier, similarity, their evaluations."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from artextract.config.core import OptUri, RayConfig, StorageConfig, Strict, Uri, WeightsUri


class ClassifierModelConfig(Strict):
    """CNN backbone -> last feature map read as a sequence -> (bi)GRU/LSTM -> pooled -> one head per task."""

    backbone: str = Field("resnet18", description="registry name: resnet18 | resnet34 | resnet50 | efficientnet_b0 | "
                          "efficientnet_b3 | mobilenet_v2 | mobilenet_v3_large | convnext_tiny | vit_b_16 (its "
                          "patch tokens are the sequence)")
    weights: WeightsUri = Field("none", description="none (offline default) | imagenet | URI of a torchvision state dict")
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

    input: Uri = Field("", description="preprocess output URI (images/ shards with whole_jpeg and label "
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
    crop_scale: tuple[float, float] = Field(
        (0.35, 1.0), description="area fraction range of the random training crop; a small fixed range "
        "(e.g. 0.2,0.3 of a 224 px image at image_size=112) trains on brushwork at its native scale")
    eval_size: int | None = Field(None, ge=32, description="square side at validation/evaluation (None = "
                                  "image_size); with native-scale crops, the whole image at its own size")
    mixup: float = Field(0.0, ge=0, description="mixup Beta(a, a) concentration; 0 = off")
    cutmix: float = Field(0.0, ge=0, description="cutmix Beta(a, a) concentration; 0 = off (with mixup too, each "
                          "mixed batch uses one of the two at random)")
    mix_prob: float = Field(1.0, ge=0, le=1, description="share of training batches that are mixed")
    loader: Literal["ray_data", "local"] = Field(
        "ray_data", description="ray_data streams decoded batches to workers; local reads the table in each "
        "worker and slices every global batch deterministically (exact 1-vs-N worker equivalence)")
    decode_cpus: float = Field(0.5, gt=0, description="Ray CPUs per decode/augment task (ray_data loader)")
    limit: int | None = Field(None, ge=1, description="use only the first N rows (by image_id)")
    seed: int = 0

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {v}")
        return v


class OptimConfig(Strict):
    """AdamW with a warmed-up cosine / one-cycle / constant schedule."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; None = off")
    backbone_lr_scale: float = Field(1.0, gt=0, description="backbone LR relative to lr (heads, RNN, projection "
                                     "train at lr); ~0.1-0.3 when fine-tuning pretrained weights")
    layer_decay: float = Field(1.0, gt=0, le=1, description="layer-wise LR decay: the backbone's first stage "
                               "trains at this fraction of its last stage's LR, geometric in between")
    freeze_backbone_epochs: int = Field(0, ge=0, description="epochs at the start with the backbone frozen "
                                        "(no gradients, BatchNorm statistics held): the new heads warm up on "
                                        "the pretrained features first")


class ClassifierLossConfig(Strict):
    """Per-head cross-entropy with unknown labels masked."""

    label_smoothing: float = Field(0.1, ge=0, lt=1)
    class_weights: Literal["none", "balanced", "sqrt"] = Field(
        "none", description="balanced: n / (C * count_c) per class; sqrt: its square root (milder)")
    task_weights: dict[str, float] = Field(default_factory=dict, description="per task; missing = 1.0")


class TrainRunConfig(Strict):
    """Epochs, batch, workers and checkpointing shared by the training jobs."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1, description="GLOBAL batch; each of N workers gets batch_size/N")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    time_budget_s: float | None = Field(None, gt=0, description="stop (validate + checkpoint) after this long")
    eval_every: int = Field(1, ge=1, description="validate every N epochs")
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    launcher: Literal["ray", "process"] = Field(
        "ray", description="ray: Ray Train workers (DDP, restarts, a cluster's GPUs); process: the same training "
        "loop in this process, 1 worker, no Ray (debugging, tiny runs, a reference for equivalence checks)")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = Field(False, description="one GPU per worker: the workers are placed on GPU nodes (an "
                          "autoscaling cluster launches them) and train on CUDA; a worker whose torch sees no "
                          "GPU says so and trains on its CPU")
    memory_gb_per_worker: float | None = Field(None, gt=0, description="RAM reserved per worker (as "
                                               "artextract.config.Resources.memory_gb)")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend: auto = NCCL with use_gpu, else gloo; gloo with use_gpu "
        "only where the GPU nodes have no working CUDA (a test cluster)")
    amp: bool = Field(True, description="bf16/fp16 autocast on GPU (ignored on CPU)")
    sync_bn: bool = Field(True, description="SyncBatchNorm across workers (GPU/NCCL); on CPU BN stays local")
    freeze_bn: bool = Field(False, description="BatchNorm in eval mode (running stats frozen)")
    seed: int = 0
    resume: bool = Field(True, description="continue from <out>/checkpoints/last.pt when it exists")
    max_failures: int = Field(2, ge=0, description="Ray Train restarts after a worker crash")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads per worker (None = torch default)")
    dtype: Literal["float32", "float64"] = Field(
        "float32", description="parameter and input precision; float64 makes runs with different worker "
        "counts or CPUs agree to ~1e-12 (float32 summation order differs per CPU kernel): for "
        "reproducibility checks, not speed")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="keep an exponential moving average of the "
                                    "weights (e.g. 0.998 ~ the last 500 steps); validation, best/last checkpoints "
                                    "and everything loaded from them use it")
    fault_after_epoch: int | None = Field(None, ge=1, description="chaos testing: crash once after checkpointing "
                                          "this epoch (Ray Train restarts the workers, which resume)")

    @model_validator(mode="after")
    def _one_process_worker(self):
        if self.launcher == "process" and self.workers != 1:
            raise ValueError(f"train.launcher=process runs 1 worker, not train.workers={self.workers}: use "
                             "train.launcher=ray for DDP")
        return self


class ClassifierTrainConfig(Strict):
    """``artextract train classifier``: CNN-RNN multi-task style/genre/artist classifier with Ray Train."""

    out: Uri = Field("", description="run directory: checkpoints/, history.jsonl, splits.parquet, summary.json")
    model: ClassifierModelConfig = ClassifierModelConfig()
    data: ClassifierDataConfig = ClassifierDataConfig()
    optim: OptimConfig = OptimConfig()
    loss: ClassifierLossConfig = ClassifierLossConfig()
    train: TrainRunConfig = TrainRunConfig()
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _process_reads_locally(self):
        if self.train.launcher == "process" and self.data.loader != "local":
            raise ValueError("train.launcher=process needs data.loader=local (Ray Data streams to Ray workers)")
        return self


class EvaluateClassifierConfig(Strict):
    """``artextract evaluate classifier``: metrics, confusion matrices, t-SNE, outliers, HTML report."""

    run: Uri = Field("", description="training run directory (checkpoints/{best,last}.pt, splits.parquet)")
    checkpoint: Literal["best", "last"] = "best"
    input: OptUri = Field(None, description="preprocess output or manifest URI; None = the run's input")
    split: Literal["test", "val", "train", "all"] | None = Field(
        None, description="rows of the run's split to evaluate; 'all' for a new collection; None = 'test' on the "
        "run's own input, 'all' on another input")
    out: Uri = ""
    batch_size: int = Field(64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tsne_max_points: int = Field(2000, ge=10)
    outlier_method: Literal["robust_distance", "isolation_forest"] = "robust_distance"
    outlier_top: int = Field(24, ge=1, description="rows in each outlier table / grid")
    mispredict_min_prob: float = Field(0.8, ge=0, le=1, description="confident mis-prediction threshold")
    tta: Literal["none", "flip"] = Field("flip", description="flip: average the softmax of each image and "
                                         "its mirror (paintings keep their style when mirrored)")
    seed: int = 0
    storage: StorageConfig = StorageConfig()


class NearDuplicateConfig(Strict):
    """Near-duplicate protocol: embed augmented copies of images and find their originals."""

    enabled: bool = False
    model: Uri = Field("", description="model spec/checkpoint that produced the embeddings")
    images: int = Field(200, ge=2, description="originals sampled from the preprocess output")
    copies: int = Field(2, ge=1, description="augmented copies per original")
    image_size: int = Field(160, ge=16)
    copy_size: int | None = Field(None, ge=16, description="side of each reproduction (None = image_size): "
                                  "copies made at the model's input size would hand verification less detail "
                                  "than a real reproduction has")
    what: Literal["faces", "images"] = "faces"
    verify_top_k: int = Field(0, ge=0, description="also re-rank each copy's top-K originals by geometric "
                              "verification (SIFT + RANSAC inliers, stages/verify.py) and report verified_* "
                              "metrics; 0 = off")
    verify_min_inliers: int = Field(5, ge=3, description="inliers that make a pair 'the same picture'")
    baseline: str | None = Field(None, description="also measure this model spec (e.g. untrained:resnet18) "
                                 "on the same originals and copies, reported under baseline")


class EvaluateSimilarityConfig(Strict):
    """``artextract evaluate similarity``: retrieval metrics, cosine distributions, SSIM/RMSE, query grid."""

    embeddings: Uri = Field("", description="embedding shards (image_id, face_idx, vector, ...)")
    out: Uri = ""
    labels: OptUri = Field(None, description="manifest/preprocess URI holding image_id + label_column")
    label_column: str | None = Field(None, description="e.g. artist or sitter: same label = relevant")
    what: Literal["faces", "images", "all"] = "all"
    ks: tuple[int, ...] = (1, 5, 10)
    preprocess: OptUri = Field(None, description="preprocess output: crops for SSIM/RMSE and the grid")
    queries: int = Field(16, ge=1, description="sample queries for SSIM/RMSE and the grid")
    grid_k: int = Field(5, ge=1)
    near_duplicate: NearDuplicateConfig = NearDuplicateConfig()
    seed: int = 0
    storage: StorageConfig = StorageConfig()


class EvaluateFacesConfig(Strict):
    """``artextract evaluate faces``: a preprocess run's detected faces against hand labels (CSV)."""

    preprocess: Uri = Field("", description="preprocess output (faces/ boxes + prob, images/ whole_jpeg)")
    labels: Uri = Field("", description="labels CSV: image_id, face_idx, x1, y1, x2, y2 (original pixels), "
                        "size (prominent|small), pose (frontal|profile|other); empty face_idx = faceless image; "
                        "optional split (dev|test)")
    out: Uri = ""
    split: Literal["all", "dev", "test"] = Field("test", description="which half of the labelled images: tune "
                                                 "on dev, report on test (a stable hash of image_id when the CSV "
                                                 "has no split column)")
    iou: float = Field(0.5, gt=0, lt=1, description="IoU that makes a detection match a labelled face")
    min_prob: float | None = Field(None, ge=0, le=1, description="also drop detections below this score "
                                   "(None: every face the preprocess run kept)")
    grid_max: int = Field(24, ge=1, description="misses and false positives each shown in errors.png")
    storage: StorageConfig = StorageConfig()


class SimilarityModelConfig(Strict):
    """EmbeddingNet: backbone -> pool -> projection head -> unit sphere."""

    backbone: str = Field("resnet50", description="any registered backbone (see model.backbone of the classifier); "
                          "vit_b_16 gives its CLS token")
    weights: WeightsUri = Field("none", description="none | imagenet | URI of a torchvision state dict")
    dim: int = Field(256, ge=2)
    pool: Literal["avg", "max", "gem"] = "avg"
    hidden: int | None = Field(None, ge=2, description="projection hidden width (None = backbone channels)")


class ExtraInputConfig(Strict):
    """A further preprocess output whose rows only add training instances."""

    input: Uri = Field(description="preprocess output URI")
    what: Literal["faces", "images"] = "images"


class SimilarityDataConfig(Strict):
    """Which crops, and what makes two of them a positive pair."""

    input: Uri = Field("", description="preprocess output URI (faces/ crop_jpeg, images/ whole_jpeg)")
    what: Literal["faces", "images"] = "faces"
    positives: Literal["instance", "label"] = Field(
        "instance", description="instance: augmented views of the same crop (reproductions); label: rows "
        "sharing label_column (sitter, artist)")
    label_column: str | None = Field(None, description="with positives=label: column of the images table")
    extra_inputs: list[ExtraInputConfig] = Field(
        default_factory=list, description="with positives=instance: more preprocess outputs (e.g. a larger "
        "painting corpus) whose crops or paintings join the training instances only, never validation; "
        "YAML list of {input, what}")
    labels: OptUri = Field(None, description="URI holding image_id + label_column (default: input's images/)")
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

    name: Literal["triplet", "contrastive", "supcon"] = Field(
        "triplet", description="triplet (with miner) | contrastive (pairs) | supcon (supervised contrastive; "
        "NT-Xent with instance positives)")
    miner: Literal["batch_hard", "semi_hard", "all"] = "batch_hard"
    margin: float = Field(0.2, gt=0, description="triplet / contrastive margin")
    distance: Literal["euclidean", "cosine"] = "euclidean"
    temperature: float = Field(0.1, gt=0, description="supcon softmax temperature")


class SimilarityTrainConfig(Strict):
    """``artextract train similarity``: Siamese/triplet metric learning on faces or paintings."""

    out: Uri = Field("", description="run directory: checkpoints/, model.pt (embed format), history, summary")
    model: SimilarityModelConfig = SimilarityModelConfig()
    data: SimilarityDataConfig = SimilarityDataConfig()
    loss: SimilarityLossConfig = SimilarityLossConfig()
    optim: OptimConfig = OptimConfig(lr=3e-4, weight_decay=1e-4)
    train: TrainRunConfig = TrainRunConfig(epochs=10)
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
