# Every target runs inside the environment made by `make setup` (bin/matta-env).
ENV := bin/matta-env
PYTEST_ARGS ?=

.PHONY: setup test test-airflow lint demo check-report bench bench-recipe bench-frontier bench-smoke lock clean
setup:
	bin/setup-env

test:
	$(ENV) python -m pytest $(PYTEST_ARGS)

# The compiled Airflow DAG run end to end by real Airflow 2 on two spans, with `matta serve`
# picking up the pushed versions (minutes long, so `make test` skips it).
test-airflow:
	MATTA_AIRFLOW_E2E=1 $(ENV) python -m pytest tests/test_airflow.py $(PYTEST_ARGS)

lint:
	$(ENV) ruff check matta_tf components pipelines serving bench tests

demo:
	$(ENV) matta demo

# The A/B report's first visible line is its decision, checked in headless Chromium (Debian
# package `chromium` on the host; not installed by `make setup`). REPORTS= checks given
# ab_report.html files (e.g. matta-demo/ab/report/ab_report.html) instead of three generated ones.
REPORTS ?=
check-report:
	bin/check-report-render $(REPORTS)

CRITEO_SAMPLE ?= ../shared/data/criteo_sample
bench:
	$(ENV) python bench/bench_shampoo.py
	$(ENV) python bench/bench_serving.py
	$(ENV) python bench/bench_eventlog.py
	$(ENV) python -m bench.run --full --data generated
	$(ENV) python -m bench.run --full --data generated:fitted --only quality
	$(ENV) python -m bench.run --full --data movielens --only quality
	if [ -d $(CRITEO_SAMPLE) ]; then $(ENV) python -m bench.run --full --data criteo:$(CRITEO_SAMPLE) --only quality,throughput --steps 60 --batch-size 256 --teacher-steps 30; fi

# Budget-aware students: search pick vs the fixed rule at each budget (bench/results/frontier/;
# ~1 hour here). The latency stage wants a quiet machine.
bench-frontier:
	$(ENV) python -m bench.bench_frontier --data generated --seeds 3
	$(ENV) python -m bench.bench_frontier --data movielens --seeds 3 --steps 150
	$(ENV) python -m bench.bench_frontier --data generated --stage latency

# The MatTA recipe study on MovieLens-100k (bench/results/recipe/summary.md; ~1-2 hours here).
RECIPE := $(ENV) python -m bench.recipe --data movielens --mix-sizes 1 --steps 150
bench-recipe:
	$(RECIPE) --stage search --trials 10
	$(RECIPE) --stage lr --optimizers shampoo,adam
	$(RECIPE) --stage final --seeds 3
	$(RECIPE) --stage final --optimizers shampoo --seeds 3 --tuned-lr --tag tuned_lr
	$(RECIPE) --stage ftsearch --optimizers adam
	$(RECIPE) --stage ftfinal --optimizers adam --seeds 3
	$(RECIPE) --stage tashape --optimizers adam --shape-seeds 2
	$(RECIPE) --stage tashapeval --optimizers adam
	$(RECIPE) --stage report --optimizers adam,shampoo

bench-smoke:
	$(ENV) python -m bench.run --smoke

# Regenerate requirements.lock from setup.py, and the Airflow overlay's lock on top of it,
# inside the environment.
lock:
	$(ENV) bin/lock-deps
	$(ENV) bin/lock-airflow

clean:
	rm -rf .venv .venv-airflow .matta-env .pytest_cache build *.egg-info
