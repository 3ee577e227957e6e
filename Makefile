# Shortcuts; scripts/test is the one command CI runs (lint, format check, types, every test).
VENV := .venv/bin

.PHONY: bootstrap test unit integration e2e lint typecheck bench demo

bootstrap:
	scripts/bootstrap

test:
	scripts/test

unit: bootstrap
	$(VENV)/pytest -q tests/unit

integration: bootstrap
	$(VENV)/pytest -q tests/integration

e2e: bootstrap
	$(VENV)/pytest -q tests/e2e

lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

typecheck: bootstrap
	$(VENV)/mypy
	$(VENV)/lint-imports

bench: bootstrap
	$(VENV)/python bench/run_all.py

demo:
	scripts/wcsync demo
