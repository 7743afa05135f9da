# vsa: two commands do everything on a fresh Debian/Ubuntu machine with Swift: `make demo` and `make test`.
SWIFT ?= swift
PREFIX ?= /usr/local

.PHONY: all deps build release demo test unit integration sim fuzz torture tsan lint format install uninstall bench bench-alloc bench-alloc-update clean

all: build

deps:
	@scripts/install-deps

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

demo: release
	@scripts/demo

# One debug build serves the unit and integration tests (the integration tests mount for real, as root); then the
# hot-path benchmarks check that no operation allocates (thresholds checked in under Benchmarks/Thresholds).
test: deps lint
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	$(MAKE) bench-alloc

# Heap allocations per hot-path operation must stay at the checked-in thresholds (zero).
bench-alloc:
	$(SWIFT) package benchmark thresholds check --target HotPath --metric mallocCountTotal --path Benchmarks/Thresholds --no-progress

# Rewrite the thresholds after an intended change (review the diff before committing it).
bench-alloc-update:
	$(SWIFT) package --allow-writing-to-package-directory benchmark thresholds update --target HotPath --metric mallocCountTotal --path Benchmarks/Thresholds

# The seeded simulation of the core (Tests/UnitTests/SimulationTests.swift): `make test` runs 24 seeds; this runs
# SEEDS of them (a failing seed is printed; VSA_SIM_SEED=N replays it).
SEEDS ?= 200
sim: deps
	$(SWIFT) build --build-tests
	VSA_SIM_SEEDS=$(SEEDS) $(SWIFT) test --skip-build --filter SimulationTests

# Structure-aware fuzzing of assembly and mount (Tests/UnitTests/HostileMetadataTests.swift) under AddressSanitizer,
# in its own build tree: FUZZ_ITERATIONS mutated arrays from FUZZ_SEED. `make test` runs 240 without the sanitizer.
FUZZ_ITERATIONS ?= 5000
FUZZ_SEED ?= 1
fuzz: deps
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build-asan
	# detect_leaks=0: LeakSanitizer reports XCTest's own test-case objects (2.7 KB) at exit; memory errors still stop it.
	ASAN_OPTIONS=detect_leaks=0 VSA_FUZZ_ITERATIONS=$(FUZZ_ITERATIONS) VSA_FUZZ_SEED=$(FUZZ_SEED) $(SWIFT) test --skip-build --sanitize=address --scratch-path .build-asan --filter HostileMetadataTests

# Real mounts, writer threads with fsync, director and drive failures, kill -9 at random points; every acknowledged
# block checked after each restart (scripts/torture). `make test` runs a short form (TortureTests).
TORTURE_ROUNDS ?= 20
TORTURE_SEED ?= $(shell date +%s)
torture: build
	scripts/torture --vsa .build/debug/vsa --rounds $(TORTURE_ROUNDS) --seed $(TORTURE_SEED)

# The concurrent unit tests and real-mount tests under ThreadSanitizer (scripts/tsan says what runs and what is not
# counted); fails on any ThreadSanitizer warning.
tsan: deps
	scripts/tsan

unit: deps
	$(SWIFT) test --filter UnitTests

integration: deps
	$(SWIFT) test --filter IntegrationTests

lint:
	@scripts/check-layering
	@$(SWIFT) format lint --strict --recursive Sources Tests Benchmarks/HotPath Package.swift

format:
	$(SWIFT) format format --in-place --recursive Sources Tests Benchmarks/HotPath Package.swift

install: release
	install -m 755 .build/release/vsa $(PREFIX)/bin/vsa
	install -m 755 mount-helpers/vsa-loop $(PREFIX)/bin/vsa-loop
	install -m 755 mount-helpers/mount.vsa /sbin/mount.vsa

uninstall:
	rm -f $(PREFIX)/bin/vsa $(PREFIX)/bin/vsa-loop /sbin/mount.vsa

# vsa beside its FUSE peers (root): writes BENCHMARKS.md and Benchmarks/ratios.png; raw output in Benchmarks/out/.
# make bench [ROUNDS=3] [RUNTIME=10] [TARGETS=raw,passthrough_ll,qsd,nbd,vsa-r0,vsa-r5] [BENCH_ARGS=--quick|--scale]
bench: release
	@scripts/bench-deps
	VSA_BIN=.build/release/vsa ROUNDS="$(ROUNDS)" RUNTIME="$(RUNTIME)" TARGETS="$(TARGETS)" Benchmarks/run $(BENCH_ARGS)
	VSA_BIN=.build/release/vsa Benchmarks/remote-drives $(RUNTIME)

# Only the remote-drive section (issue 15): RAID-5 over 4 NBD drives in another network namespace against nbdfuse.
bench-remote: release
	@scripts/bench-deps
	VSA_BIN=.build/release/vsa Benchmarks/remote-drives $(RUNTIME)

clean:
	rm -rf .build
