# vsa: two commands do everything on a fresh Debian/Ubuntu machine with Swift: `make demo` and `make test`.
SWIFT ?= swift
PREFIX ?= /usr/local

.PHONY: all deps build release demo test unit integration lint format install uninstall bench clean

all: build

deps:
	@scripts/install-deps

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

demo: release
	@scripts/demo

# One debug build serves the unit and integration tests (the integration tests mount for real, as root).
test: deps lint
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

unit: deps
	$(SWIFT) test --filter UnitTests

integration: deps
	$(SWIFT) test --filter IntegrationTests

lint:
	@scripts/check-layering
	@$(SWIFT) format lint --strict --recursive Sources Tests Package.swift

format:
	$(SWIFT) format format --in-place --recursive Sources Tests Package.swift

install: release
	install -m 755 .build/release/vsa $(PREFIX)/bin/vsa
	install -m 755 mount-helpers/vsa-loop $(PREFIX)/bin/vsa-loop
	install -m 755 mount-helpers/mount.vsa /sbin/mount.vsa

uninstall:
	rm -f $(PREFIX)/bin/vsa $(PREFIX)/bin/vsa-loop /sbin/mount.vsa

clean:
	rm -rf .build
