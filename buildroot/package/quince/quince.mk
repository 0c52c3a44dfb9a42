################################################################################
#
# quince
#
################################################################################

# The source is this repository itself (buildroot/ is its BR2_EXTERNAL
# tree), so there is nothing to download or hash.
QUINCE_SITE = $(BR2_EXTERNAL_QUINCE_PATH)/..
QUINCE_SITE_METHOD = local

# Copy only what cargo needs: not target/ (gigabytes of host builds) except
# the vendored crates in it, and not a local test server's data.
QUINCE_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--include='/target/buildroot-vendor/***' --exclude='/target/*' \
	--exclude=/quince-data

# As the appliance profile in Cargo.toml: no `bench` feature (its plotting
# and MQTT crates are no use on the appliance), fat LTO and one codegen
# unit. Buildroot's cargo environment sets the release profile from
# BR2_ENABLE_LTO; these come after it and win.
QUINCE_CARGO_BUILD_OPTS = --no-default-features
QUINCE_CARGO_INSTALL_OPTS = --no-default-features
QUINCE_CARGO_ENV = \
	CARGO_PROFILE_RELEASE_LTO=fat \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1

# Buildroot vendors crates only for downloaded packages, and builds with
# --offline. `make buildroot-vendor` puts them in target/buildroot-vendor
# with the cargo configuration that points at them; without it, cargo
# fetches the locked crates into Buildroot's cargo home (needs the network,
# unlike the rest of the build after `make source`). Appended once, so a
# `make quince-rebuild` does not repeat it.
QUINCE_VENDOR = $(@D)/target/buildroot-vendor

define QUINCE_USE_VENDORED_CRATES
	if [ -f $(QUINCE_VENDOR)/config.toml ]; then \
		mkdir -p $(@D)/.cargo && \
		{ grep -qs vendored-sources $(@D)/.cargo/config.toml || \
			cat $(QUINCE_VENDOR)/config.toml >>$(@D)/.cargo/config.toml; }; \
	else \
		echo "quince: no target/buildroot-vendor (make buildroot-vendor); fetching crates"; \
		cd $(@D) && $(HOST_MAKE_ENV) $(PKG_COMMON_CARGO_ENV) \
			cargo fetch --locked --manifest-path Cargo.toml; \
	fi
endef
QUINCE_PRE_BUILD_HOOKS += QUINCE_USE_VENDORED_CRATES

$(eval $(cargo-package))
