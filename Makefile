# Set-up is part of every target: a fresh machine needs only python3 (>= 3.10) and make.
PY := .venv/bin/python
STAMP := .venv/.installed

# constraints.txt pins every package of the test environment (see its header); a change to it rebuilds the venv.
$(STAMP): pyproject.toml constraints.txt
	rm -rf .venv
	python3 -m venv .venv
	# torch first and pinned, so pip takes the local CPU build rather than a CUDA download
	.venv/bin/pip install --quiet -c constraints.txt torch==2.13.0
	PIP_CONSTRAINT=constraints.txt .venv/bin/pip install --quiet -e ".[test,flax,tf-cpu]"
	touch $(STAMP)

.PHONY: setup demo test bench
setup: $(STAMP)

demo: $(STAMP)
	.venv/bin/pretrained demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/bench_load.py && $(PY) bench/bench_save.py
