PYTHON ?= python3
VENV ?= .venv
# The versions installed: the tested set by default; `CONSTRAINTS=requirements/lowest.txt` for the lowest releases
# pyproject.toml allows, `CONSTRAINTS=` (empty) for the newest releases.
CONSTRAINTS ?= requirements/pinned.txt
BIN := $(VENV)/bin
DEMO_DIR ?= demo_output
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install versions test test-fast demo app lint bench lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	touch $@

versions: install
	@$(BIN)/python -c 'import importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in \
		("transformers", "datasets", "accelerate", "timm", "huggingface_hub", "torch")))'

test: versions
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# The tests that start no subprocess (no training run, torchrun or browser): a minute or two.
test-fast: versions
	$(BIN)/python -m pytest -q -m "not slow"

# Build the embedded sample, train a tiny model on it (CPU, a few minutes), evaluate it on both test splits,
# and chat with it.
demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/python -m mod_dataset build mod_dataset/sample $(DEMO_DIR)/data
	$(BIN)/python train.py --dataset $(DEMO_DIR)/data --output_dir $(DEMO_DIR)/model --model_config tiny \
		--learning_rate 1e-3 --warmup_steps 30 --num_train_epochs 24 \
		--per_device_train_batch_size 16 --eval_steps 120 --logging_steps 40 --seed 0
	$(BIN)/python evaluate_mod.py --model $(DEMO_DIR)/model --dataset $(DEMO_DIR)/data \
		--output $(DEMO_DIR)/results.json --write_submission $(DEMO_DIR)/submission
	printf '%s\n' '今天考试考砸了' '太好了，我们去吃火锅吧' '#000' '/quit' | \
		$(BIN)/python chat.py --model $(DEMO_DIR)/model --dataset $(DEMO_DIR)/data

# The web chat on the `make demo` output, at http://127.0.0.1:7860 (`--port`, `--host` in app.py).
app: install
	$(BIN)/python app.py --model $(DEMO_DIR)/model --dataset $(DEMO_DIR)/data

# The paper's recipe (README: Reproducing the paper): IMFE -> CEM -> MOD -> evaluation on the built release DATA, each
# stage in a folder of RUNS, then the paper's tables beside ours. Online: the recipe starts from two hub checkpoints.
# Run it again to skip the finished stages and resume a stopped one.
DATA ?= data/mod-zh
RUNS ?= runs/paper
.PHONY: paper
paper: install
	HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 $(BIN)/python -m mod_training.recipe --recipe recipes/mod_gpt \
		--dataset $(DATA) --output_dir $(RUNS)

# The CPU rows at base size (about an hour on 2 CPU cores); `--rows GROUP ... --update` reruns some rows only.
bench: install
	$(BIN)/python -m benchmarks --size base --repeats 3 --threads 1 --output BENCHMARKS.json \
		--rows training overhead memory generation evaluation release openai-gpt

# Write the newest releases into the tested set (then run `make test demo` before committing it).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -e ".[test]"
	{ sed -n '/^#/p' requirements/pinned.txt; .venv-lock/bin/pip freeze --exclude-editable; } > requirements/pinned.txt.new
	mv requirements/pinned.txt.new requirements/pinned.txt
	rm -rf .venv-lock

lint: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(DEMO_DIR) build *.egg-info
