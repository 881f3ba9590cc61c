"""``artextract <verb> [--flags] [key=value ...]``: every verb builds a typed config (schema
defaults <- ``--config`` YAML <- flags <- ``key=value`` overrides) and calls one library function."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass, field
from typing import Callable

from artextract import console
from artextract.pipelines import ray_env
from artextract.config import ConfigError, load_config, to_yaml


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets one config key."""

    name: str
    key: str
    help: str = ""
    is_switch: bool = False
    short: str | None = None


@dataclass(frozen=True)
class Verb:
    """A CLI verb: its config schema, its flags and the function ('module:attr') it runs."""

    words: tuple[str, ...]
    schema: str
    target: str
    help: str
    flags: tuple[Flag, ...] = field(default_factory=tuple)
    prints: bool = False  # the target prints its own human summary
    required: tuple[str, ...] = ()  # config keys that must be set (checked before anything runs)


_STORAGE = (Flag("--s3-endpoint", "storage.s3_endpoint", "S3-compatible endpoint URL (MinIO, Ceph)"),)

VERBS: tuple[Verb, ...] = (
    Verb(("ingest", "wikiart"), "IngestWikiartConfig", "artextract.ingest.wikiart:run",
         "ArtGAN split files + WikiArt image tree -> manifest",
         (Flag("--splits", "splits", "directory of the ArtGAN split files"),
          Flag("--images", "images", "URI of the image tree (Style/file.jpg)"),
          Flag("--out", "out", "manifest output URI")) + _STORAGE,
         required=("splits", "images", "out")),
    Verb(("ingest", "nga"), "IngestNgaConfig", "artextract.ingest.nga:run",
         "NGA open-data objects.csv + published_images.csv -> manifest (optionally download images)",
         (Flag("--objects", "objects", "objects.csv URI"),
          Flag("--published-images", "published_images", "published_images.csv URI"),
          Flag("--out", "out", "manifest output URI"),
          Flag("--classification", "classification", "keep only this classification, e.g. Painting"),
          Flag("--download", "download.enabled", "download the images", is_switch=True),
          Flag("--images-out", "download.images_out", "where downloaded images go")) + _STORAGE,
         required=("objects", "published_images", "out")),
    Verb(("ingest", "folder"), "IngestFolderConfig", "artextract.ingest.folder:run",
         "any folder or bucket of images -> manifest",
         (Flag("--images", "images", "folder or s3:// prefix"),
          Flag("--out", "out", "manifest output URI")) + _STORAGE,
         required=("images", "out")),
    Verb(("preprocess",), "PreprocessConfig", "artextract.pipelines.preprocess:run",
         "Ray Data: decode, validate, detect faces -> images/faces/quarantine shards",
         (Flag("--manifest", "manifest", "manifest URI (directory of part-*.parquet)"),
          Flag("--out", "out", "output URI"),
          Flag("--address", "ray.address", "Ray address (default: local Ray)")) + _STORAGE,
         required=("manifest", "out")),
    Verb(("demo",), "DemoConfig", "artextract.demo:run",
         "ingest + preprocess the embedded sample collection (offline) and print a summary",
         (Flag("--out", "out", "output directory"),
          Flag("--images", "images", "run on your own folder or bucket instead")) + _STORAGE, prints=True),
    Verb(("embed",), "EmbedConfig", "artextract.pipelines.embed:run",
         "Ray Data: face crops / whole paintings of a preprocess output -> embedding shards",
         (Flag("--model", "model", "checkpoint URI, or untrained:<backbone> / imagenet:<backbone>[=<weights URI>]"),
          Flag("--input", "input", "preprocess output URI"),
          Flag("--out", "out", "output URI for part-*.parquet embedding shards"),
          Flag("--what", "what", "faces | images | both"),
          Flag("--address", "ray.address", "Ray address (default: local Ray)")) + _STORAGE,
         required=("input", "out")),
    Verb(("index", "build"), "IndexBuildConfig", "artextract.jobs.index_build:run_build",
         "embedding shards -> a new published version of the sharded FAISS index",
         (Flag("--embeddings", "embeddings", "URI of the embedding part-*.parquet shards"),
          Flag("--out", "out", "index root URI (CURRENT, versions/)"),
          Flag("--shards", "shards", "number of shards (default 4)"),
          Flag("--factory", "factory", "faiss factory string, e.g. IVF1024,Flat (default: by size)"),
          Flag("--parallel", "parallel", "local | ray"),
          Flag("--address", "ray.address", "Ray address for parallel=ray (default: local Ray)")) + _STORAGE,
         required=("embeddings", "out")),
    Verb(("index", "rollback"), "IndexRollbackConfig", "artextract.jobs.reindex:run_rollback",
         "point the index's CURRENT back at an older kept version",
         (Flag("--index", "index", "index root URI"),
          Flag("--version", "version", "version number to serve")) + _STORAGE,
         required=("index",)),
    Verb(("reindex",), "ReindexConfig", "artextract.jobs.reindex:run",
         "diff a collection against its index: preprocess + embed only what changed, publish a new version",
         (Flag("--collection", "collection", "folder or s3:// prefix of the collection's images"),
          Flag("--index", "index", "index root URI"),
          Flag("--model", "embed.model", "embedding checkpoint URI or untrained:<backbone>"),
          Flag("--rebuild", "rebuild", "re-embed the whole collection and build afresh", is_switch=True),
          Flag("--address", "ray.address", "Ray address (default: local Ray)")) + _STORAGE,
         required=("collection", "index")),
    Verb(("train", "classifier"), "ClassifierTrainConfig", "artextract.train.classifier:run",
         "Ray Train: CNN-RNN style/genre/artist classifier -> checkpoints, history, summary",
         (Flag("--input", "data.input", "preprocess output or manifest URI with label columns"),
          Flag("--out", "out", "run directory URI"),
          Flag("--workers", "train.workers", "Ray Train workers (DDP ranks)"),
          Flag("--address", "ray.address", "Ray address (default: local Ray)")) + _STORAGE,
         required=("data.input", "out")),
    Verb(("train", "similarity"), "SimilarityTrainConfig", "artextract.train.similarity:run",
         "Ray Train: Siamese/triplet embedding model on faces or paintings -> checkpoints + model.pt",
         (Flag("--input", "data.input", "preprocess output URI"),
          Flag("--out", "out", "run directory URI"),
          Flag("--workers", "train.workers", "Ray Train workers (DDP ranks)"),
          Flag("--address", "ray.address", "Ray address (default: local Ray)")) + _STORAGE,
         required=("data.input", "out")),
    Verb(("evaluate", "classifier"), "EvaluateClassifierConfig", "artextract.eval.classifier:run",
         "metrics, confusion matrices, t-SNE, outliers and an HTML report for a classifier run",
         (Flag("--run", "run", "training run directory"),
          Flag("--manifest", "input", "preprocess output or manifest URI (default: the run's input)"),
          Flag("--split", "split", "test | val | train | all"),
          Flag("--out", "out", "report directory")) + _STORAGE,
         required=("run", "out")),
    Verb(("evaluate", "similarity"), "EvaluateSimilarityConfig", "artextract.eval.similarity:run",
         "precision/recall@K, MAP@R, MRR, cosine distributions, SSIM/RMSE and a query grid for embeddings",
         (Flag("--embeddings", "embeddings", "embedding shards URI"),
          Flag("--out", "out", "report directory"),
          Flag("--labels", "labels", "manifest/preprocess URI with the label column"),
          Flag("--label-column", "label_column", "label column (e.g. artist): same label = relevant"),
          Flag("--preprocess", "preprocess", "preprocess output (crops for SSIM/RMSE and the grid)")) + _STORAGE,
         required=("embeddings", "out")),
    Verb(("evaluate", "faces"), "EvaluateFacesConfig", "artextract.eval.faces:run",
         "detected faces vs hand labels: box precision/recall/AP, prominent-face and faceless-image rates, "
         "recall by pose, an error grid",
         (Flag("--preprocess", "preprocess", "preprocess output URI"),
          Flag("--labels", "labels", "labels CSV URI"),
          Flag("--split", "split", "dev | test | all"),
          Flag("--out", "out", "report directory")) + _STORAGE,
         required=("preprocess", "labels", "out")),
    Verb(("search",), "SearchConfig", "artextract.jobs.search:run_search",
         "k-NN search of a published index by query vector (.npy), image_id or image -> results.json + grid.png",
         (Flag("--index", "index", "index root URI"),
          Flag("--vector", "vector", ".npy file with a (d,) or (q,d) float32 query"),
          Flag("--id", "id", "query by image_id (all its stored vectors)"),
          Flag("--image", "image", "query by an image file/URI: its faces, else the whole painting"),
          Flag("--model", "model", "with --image: checkpoint URI or untrained:<backbone> "
               "(default: the index's recorded model)"),
          Flag("--face-idx", "face_idx", "with --id: only this face (-1 = whole image)"),
          Flag("--top-k", "k", "neighbours per query (default 10)", short="-k"),
          Flag("--nprobe", "nprobe", "IVF lists probed (default: index.json)"),
          Flag("--out", "out", "output directory"),
          Flag("--manifest", "manifest", "ingest manifest URI: join title/artist/date/urls"),
          Flag("--faces", "faces", "preprocess output URI: join boxes, draw the thumbnail grid"),
          Flag("--pose", "pose", "off | filter | rerank: similar head poses (needs --faces)")) + _STORAGE),    Verb(("serve",), "ServeConfig", "artextract.serve.app:run",
         "web page + JSON API: search the index by painting, face or upload (binds 127.0.0.1)",
         (Flag("--index", "index", "index root URI"),
          Flag("--host", "host", "bind address (default 127.0.0.1)"),
          Flag("--port", "port", "TCP port (default 8000)"),
          Flag("--faces", "faces", "preprocess output URI (default: discovered from the index)"),
          Flag("--manifest", "manifest", "ingest manifest URI with title/artist/date/IIIF urls"),
          Flag("--reports", "reports", "directory of HTML reports served under /reports/")) + _STORAGE,
         prints=True,
         required=("index",)),
)


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, Verb]]:
    parser = argparse.ArgumentParser(prog="artextract", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show everything: debug lines, Ray's and other libraries' logs")
    top = parser.add_subparsers(dest="verb", required=True, metavar="verb")
    groups: dict[str, argparse._SubParsersAction] = {}
    by_dest: dict[str, Verb] = {}
    for verb in VERBS:
        if len(verb.words) == 2:
            if verb.words[0] not in groups:
                grp = top.add_parser(verb.words[0], help=f"{verb.words[0]} ...")
                groups[verb.words[0]] = grp.add_subparsers(dest="sub", required=True, metavar="what")
            p = groups[verb.words[0]].add_parser(verb.words[1], help=verb.help, description=verb.help)
        else:
            p = top.add_parser(verb.words[0], help=verb.help, description=verb.help)
        p.add_argument("--config", help="YAML config file (local path or URI)")
        p.add_argument("--check", action="store_true",
                       help="validate the config (schema, required settings) and print it resolved; run nothing")
        for flag in verb.flags:
            names = [flag.name] + ([flag.short] if flag.short else [])
            if flag.is_switch:
                p.add_argument(*names, dest=flag.key, action="store_const", const=True, help=flag.help)
            else:
                p.add_argument(*names, dest=flag.key, help=flag.help)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        p.set_defaults(_verb=verb)
        by_dest[" ".join(verb.words)] = verb
    return parser, by_dest


def _check_required(cfg, verb: Verb) -> None:
    """Every setting the verb cannot run without, named at once (with its flag), before any work."""
    missing = []
    for key in verb.required:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value in (None, ""):
            flag = next((f.name for f in verb.flags if f.key == key), None)
            missing.append(f"{key}= ({flag})" if flag else f"{key}=")
    if missing:
        raise ConfigError(f"missing setting{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")


def _resolve(target: str) -> Callable:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``artextract`` command; returns the process exit code."""
    parser, _ = _build_parser()
    args = parser.parse_args(argv)
    console.setup(args.verbose)
    verb: Verb = args._verb
    flags = {f.key: getattr(args, f.key) for f in verb.flags if getattr(args, f.key) is not None}
    schema = getattr(importlib.import_module("artextract.config"), verb.schema)
    had_ray = ray_env.ray_running()
    try:
        cfg = load_config(schema, args.config, list(args.overrides), flags=flags)
        _check_required(cfg, verb)
        if args.check:
            print(to_yaml(cfg), end="")
            return 0
        summary = _resolve(verb.target)(cfg)
    except ConfigError as exc:
        print(f"artextract {' '.join(verb.words)}: config error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, ConnectionError, OSError, RuntimeError) as exc:
        print(f"artextract {' '.join(verb.words)}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        ray_env.stop_local_ray(had_ray)  # failed or not, the command's own local Ray goes with it
    if isinstance(summary, dict) and not verb.prints:
        print(json.dumps(summary.get("counts", summary), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
