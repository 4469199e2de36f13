# warmpod — the developer's entry points. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
export AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/%2f

.PHONY: help deps build test lint fmt rabbitmq clean run

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps: ## install system packages a fresh Debian needs (build tools, runtimes, bubblewrap, RabbitMQ)
	scripts/deps.sh

rabbitmq: ## make sure RabbitMQ answers on $$AMQP_URL (starts or installs it)
	scripts/ensure-rabbitmq.sh

run: ## start RabbitMQ, pod-manager (local backend) and api-server in the foreground; Ctrl-C stops both
	scripts/run.sh

build: ## build every crate (debug)
	$(CARGO) build --workspace --all-targets

test: rabbitmq build ## run every test, inside an outer pids/memory cgroup
	scripts/with-test-cgroup.sh $(CARGO) nextest run --workspace --profile ci --no-fail-fast

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

clean: ## remove build output
	$(CARGO) clean
