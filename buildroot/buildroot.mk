################################################################################
#
# buildroot.mk: make targets for the Buildroot tree (buildroot/README.md)
#
################################################################################

# The main Makefile includes this file.
#
#   make buildroot-vendor                               crates for an offline build
#   make buildroot-check BUILDROOT=/path/to/buildroot   offline checks of the tree

.PHONY: buildroot-vendor buildroot-check

# Buildroot builds cargo packages with --offline and vendors crates only for
# packages it downloads; quince is a local package, so it brings its own.
# target/ is ignored by git, and buildroot/package/quince/quince.mk copies
# this directory (and only this one of target/) into the build.
BUILDROOT_VENDOR := target/buildroot-vendor

buildroot-vendor: deps
	rm -rf $(BUILDROOT_VENDOR)
	mkdir -p $(BUILDROOT_VENDOR)
	@# stdout is the [source] configuration that points cargo at the crates;
	@# quince.mk adds it to the build's .cargo/config.toml.
	$(CARGO) vendor --locked $(BUILDROOT_VENDOR)/crates >$(BUILDROOT_VENDOR)/config.toml
	@echo "vendored $$(ls $(BUILDROOT_VENDOR)/crates | wc -l) crates into $(BUILDROOT_VENDOR)"

BUILDROOT ?=

buildroot-check:
	@if [ -z "$(BUILDROOT)" ]; then \
	  echo "usage: make buildroot-check BUILDROOT=/path/to/buildroot (a Buildroot source tree, 2026.05 or newer)" >&2; \
	  exit 1; \
	fi
	PATH="$$PATH:/sbin:/usr/sbin" buildroot/check.sh $(BUILDROOT)
