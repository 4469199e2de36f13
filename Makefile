# warmpod — the developer's entry points. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
export AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/%2f

.PHONY: help deps build test lint fmt rabbitmq clean run bench-runner
.PHONY: validate-manifests images minikube-up minikube-down deploy watch

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps: ## install system packages a fresh Debian needs (build tools, runtimes, bubblewrap, RabbitMQ); precompile the C++ headers and pre-started Java's bootstrap
	scripts/deps.sh

rabbitmq: ## make sure RabbitMQ answers on $$AMQP_URL (starts or installs it)
	scripts/ensure-rabbitmq.sh

run: ## start RabbitMQ, pod-manager (local backend) and api-server in the foreground; Ctrl-C stops both
	scripts/run.sh

.PHONY: run-pod-manager
run-pod-manager: ## start RabbitMQ and pod-manager alone (local backend, env defaults) in the foreground
	scripts/ensure-rabbitmq.sh
	$(CARGO) build -p warmpod-runner -p pod-manager
	"$${CARGO_TARGET_DIR:-target}/debug/pod-manager"

build: ## build every crate (debug)
	$(CARGO) build --workspace --all-targets

test: rabbitmq build validate-manifests ## run every test, inside an outer pids/memory cgroup; the runner's suite again with pre-started interpreters
	scripts/with-test-cgroup.sh $(CARGO) nextest run --workspace --profile ci --no-fail-fast
	$(MAKE) test-runner-prestart

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

clean: ## remove build output
	$(CARGO) clean

.PHONY: test-runner-prestart
test-runner-prestart: ## the runner's whole test suite with Python, JavaScript and Java jobs on pre-started runtimes (--prestart)
	WARMPOD_RUNNER_TEST_PRESTART=1 scripts/with-test-cgroup.sh $(CARGO) nextest run -p warmpod-runner --profile ci --no-fail-fast

RUNS ?= 300
bench-runner: ## runner size and start-up: a Python hello world job vs python3 directly (RUNS=300)
	$(CARGO) build --release -p warmpod-runner
	standby-image/runner/bench/startup.py "$${CARGO_TARGET_DIR:-target}/release/warmpod-runner" $(RUNS)
	@# As root, also as an unprivileged uid (how the runner runs in a sandbox or pod).
	if [ "$$(id -u)" = 0 ]; then standby-image/runner/bench/startup.py "$${CARGO_TARGET_DIR:-target}/release/warmpod-runner" $(RUNS) --as-uid 65432; fi

# --- Whole-stack figures (docs/benchmarks.md); each starts its own stack ----
.PHONY: bench bench-cpu load chaos release
BENCH_ARGS ?=
N ?= 2000
C ?= 32
release: ## release build of the api-server, pod-manager and runner (what bench, load, chaos run)
	$(CARGO) build --release -p api-server -p pod-manager -p warmpod-runner

bench: rabbitmq release ## e2e latency (Python, JS, C, Java) and throughput vs bare spawns, per-phase breakdown (BENCH_ARGS=--samples 200)
	/usr/bin/python3 bench/bench.py $(BENCH_ARGS)

bench-cpu: rabbitmq release ## CPU per job (pod-manager + sandboxes, api-server, RabbitMQ) vs a bare python3 spawn; root, cgroup v1 cpuacct
	/usr/bin/python3 bench/cpu.py

load: rabbitmq release ## N async jobs (default 2000) at concurrency C (32), each checked; nothing lost or wrong
	/usr/bin/python3 bench/load.py -n $(N) -c $(C)

chaos: rabbitmq release ## fault drills under load (kills pod-manager, restarts RabbitMQ, kills an api-server, abusive jobs); not part of `make test`
	/usr/bin/python3 bench/chaos.py $(BENCH_ARGS)

# --- Kubernetes (docs/operations.md, "Kubernetes with minikube") -----------
MINIKUBE ?= minikube
KUBECTL ?= kubectl
NAMESPACE ?= warmpod
IMAGE_TAG ?= dev
MINIKUBE_START_FLAGS ?= --cni=calico --cpus=4 --memory=8g
ROLLOUT = $(KUBECTL) -n $(NAMESPACE) rollout status --timeout=600s

validate-manifests: ## render k8s-config; kubernetes-validate --strict (1.33), checkov, hadolint (tools from PyPI)
	scripts/validate-manifests.sh

images: ## build the standby, api-server and pod-manager images inside minikube (no registry)
	$(MINIKUBE) image build --build-env=DOCKER_BUILDKIT=1 -t warmpod/standby:$(IMAGE_TAG) -f standby-image/Dockerfile .
	$(MINIKUBE) image build --build-env=DOCKER_BUILDKIT=1 -t warmpod/api-server:$(IMAGE_TAG) -f api-server/Dockerfile .
	$(MINIKUBE) image build --build-env=DOCKER_BUILDKIT=1 -t warmpod/pod-manager:$(IMAGE_TAG) -f pod-manager/Dockerfile .

minikube-up: ## start minikube (Calico enforces NetworkPolicy), build the images, apply k8s-config, wait for the rollout
	$(MINIKUBE) status >/dev/null 2>&1 || $(MINIKUBE) start $(MINIKUBE_START_FLAGS)
	$(MAKE) images
	$(KUBECTL) apply -k k8s-config
	$(ROLLOUT) statefulset/rabbitmq
	$(ROLLOUT) deployment/warmpod-standby
	$(ROLLOUT) deployment/warmpod-standby-python
	$(ROLLOUT) deployment/warmpod-standby-javascript
	$(ROLLOUT) deployment/pod-manager
	$(ROLLOUT) deployment/api-server

deploy: images ## rebuild the images and roll the new ones out to the running cluster
	$(KUBECTL) apply -k k8s-config
	$(KUBECTL) -n $(NAMESPACE) rollout restart deployment/warmpod-standby deployment/warmpod-standby-python deployment/warmpod-standby-javascript deployment/pod-manager deployment/api-server
	$(ROLLOUT) deployment/warmpod-standby
	$(ROLLOUT) deployment/warmpod-standby-python
	$(ROLLOUT) deployment/warmpod-standby-javascript
	$(ROLLOUT) deployment/pod-manager
	$(ROLLOUT) deployment/api-server

watch: ## watch standby pods (generic and per language) being claimed, run and replaced
	$(KUBECTL) get pods -n $(NAMESPACE) -l app.kubernetes.io/name=warmpod-standby -w -L warmpod.io/language,warmpod.io/state,warmpod.io/job

minikube-down: ## delete warmpod from the cluster and stop minikube (`minikube delete` wipes it)
	-$(KUBECTL) delete -k k8s-config --ignore-not-found --wait=false
	$(MINIKUBE) stop
