# quince: build, run and test.
#
#   make deps    check the Rust toolchain, install missing Debian packages
#   make build   release binary at target/release/quince
#   make run     build and run a server on 127.0.0.1:4433 with data in ./quince-data
#   make test    format check, clippy, then every unit and integration test
#   make bench   load scenarios against quince and Mosquitto; writes docs/BENCHMARKS.md
#   make image   the appliance disk image in target/image/BOARD/: BOARD=qemu-x86_64
#                (default), rpi4 (Raspberry Pi 4) or rpi5 (Raspberry Pi 5)
#   make qemu    boot that image in QEMU with QUIC and SSH forwarded to loopback
#   make soak    50 power cuts of the image in QEMU under load (minutes; not in make test)
#   make clean   remove build output (keeps ./quince-data)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# rustup installs into ~/.cargo/bin, which non-login shells (CI, sudo) often lack.
PATH := $(HOME)/.cargo/bin:$(PATH)
export PATH

CARGO ?= cargo

# Oldest rustc that builds the locked dependencies: sysinfo 0.40 declares
# rust-version 1.95 (the crate itself needs 1.85 for edition 2024).
RUST_MIN := 1.95

# `make run` settings: make run LISTEN=0.0.0.0:4433 DATA_DIR=/srv/quince ARGS='--log-level debug'
LISTEN ?= 127.0.0.1:4433
DATA_DIR ?= ./quince-data
ARGS ?=

# Steps of `make test`, run in this order; the first failure stops it.
TEST_STEPS := fmt-check clippy cargo-test test-image test-pi

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

.DEFAULT_GOAL := build
# The steps must run one after another even under `make -j`.
.NOTPARALLEL:
.PHONY: deps test-deps build run test $(TEST_STEPS) bench bench-deps clean image image-deps appliance-binary cross-deps qemu soak

deps:
	@if ! $(CARGO) --version >/dev/null 2>&1; then \
	  echo "error: cargo not found (searched PATH and $(HOME)/.cargo/bin)." >&2; \
	  echo "quince needs Rust $(RUST_MIN) or newer; Debian bookworm's rustc (1.63) is too old." >&2; \
	  echo "Install rustup's stable toolchain (https://rustup.rs), then run make again." >&2; \
	  exit 1; \
	fi
	@v=$$(rustc --version | awk '{print $$2}'); \
	have=$$(echo "$$v" | awk -F. '{print $$1 * 1000 + $$2}'); \
	need=$$(echo "$(RUST_MIN)" | awk -F. '{print $$1 * 1000 + $$2}'); \
	if [ "$$have" -lt "$$need" ]; then \
	  echo "error: rustc $$v ($$(command -v rustc)) is too old; quince needs $(RUST_MIN) or newer." >&2; \
	  echo "Update with: rustup update stable" >&2; \
	  exit 1; \
	fi
	@missing=""; \
	if ! printf 'int main(void) { return 0; }\n' | cc -x c -o /dev/null - >/dev/null 2>&1; then \
	  missing="$$missing gcc libc6-dev"; \
	fi; \
	if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
	  missing="$$missing ca-certificates"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq; \
	  $(APT_INSTALL)$$missing; \
	fi

build: deps
	$(CARGO) build --release --locked

run: deps
	$(CARGO) run --release --locked --bin quince -- serve --listen $(LISTEN) --data-dir $(DATA_DIR) $(ARGS)

test: deps $(TEST_STEPS)
	@echo "make test: all steps passed ($(TEST_STEPS))"

fmt-check:
	@echo "==> cargo fmt --all -- --check"
	@if $(CARGO) fmt --version >/dev/null 2>&1; then \
	  $(CARGO) fmt --all -- --check; \
	else \
	  echo "warning: rustfmt is not installed; format check SKIPPED (rustup component add rustfmt)" >&2; \
	fi

clippy:
	@echo "==> cargo clippy --all-targets --locked -- -D warnings"
	@if $(CARGO) clippy --version >/dev/null 2>&1; then \
	  $(CARGO) clippy --all-targets --locked -- -D warnings; \
	else \
	  echo "warning: clippy is not installed; lints SKIPPED (rustup component add clippy)" >&2; \
	fi

# The power-loss tests talk to a real Network UPS Tools server (upsd with
# the dummy-ups driver), on the host and from the image in QEMU.
test-deps:
	@if [ ! -x /lib/nut/dummy-ups ]; then \
	  echo "installing nut-server (the UPS server the power tests use)"; \
	  $(SUDO) apt-get update -qq; \
	  $(APT_INSTALL) nut-server; \
	fi

cargo-test: test-deps
	@echo "==> cargo test --locked"
	$(CARGO) test --locked

# `make bench BENCH_ARGS='--only one-to-one,fan-out'` runs a subset; the full
# (longer) version is `target/release/quince bench --report docs/BENCHMARKS.md`.
BENCH_ARGS ?=

bench-deps:
	@if [ ! -x /usr/sbin/mosquitto ]; then \
	  echo "installing mosquitto (the reference peer)"; \
	  $(SUDO) apt-get update -qq; \
	  $(APT_INSTALL) mosquitto; \
	fi

bench: deps bench-deps build
	target/release/quince bench --quick --report docs/BENCHMARKS.md $(BENCH_ARGS)

# --- The appliance image (board/, overlay/; see README "The appliance") ---

BOARD ?= qemu-x86_64
IMAGE_DIR := target/image/$(BOARD)
RUST_TARGET := $(shell sed -n 's/^RUST_TARGET=//p' board/$(BOARD)/board.conf)
HOST_TARGET := x86_64-unknown-linux-gnu

# Host tools that build and test the image (none needs root to run).
IMAGE_TOOLS := mkfs.erofs:erofs-utils mkfs.vfat:dosfstools mcopy:mtools sfdisk:fdisk \
  mkfs.ext4:e2fsprogs cpio:cpio depmod:kmod xz:xz-utils readelf:binutils \
  qemu-system-x86_64:qemu-system-x86 qemu-system-aarch64:qemu-system-arm \
  qemu-aarch64-static:qemu-user-static nft:nftables ssh:openssh-client ssh-keygen:openssh-client
IMAGE_FILES := /usr/share/OVMF/OVMF_CODE.fd:ovmf

image-deps:
	@missing=""; \
	for t in $(IMAGE_TOOLS); do \
	  PATH="$$PATH:/sbin:/usr/sbin" command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; \
	done; \
	for f in $(IMAGE_FILES); do [ -e $${f%%:*} ] || missing="$$missing $${f#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq; \
	  $(APT_INSTALL) $$(echo $$missing | tr ' ' '\n' | sort -u); \
	fi

ifeq ($(RUST_TARGET),$(HOST_TARGET))
APPLIANCE_BIN := target/$(RUST_TARGET)/appliance/quince

# Static (no libc needed on the image), without the bench.
appliance-binary: deps
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --locked --profile appliance \
	  --no-default-features --target $(RUST_TARGET) --bin quince
else
# Another architecture (the Raspberry Pi's arm64): rustup here has only its
# host's standard library, so Debian's Rust (rustc-web, 1.96, which builds the
# same Cargo.lock) cross-compiles with Debian's arm64 standard library and
# gcc-aarch64-linux-gnu as the linker (ring's C code builds with it too). The
# packages are installed on this machine (arm64 added as a foreign
# architecture); PATH puts Debian's cargo and rustc before rustup's, and a
# target directory of their own keeps the two compilers' builds apart.
# Incremental like any cargo build: the second `make image` builds nothing.
CROSS_GCC := $(subst unknown-,,$(RUST_TARGET))-gcc
CROSS_PACKAGES := rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
DEBIAN_CARGO := env PATH=/usr/bin:/bin CARGO_HOME=$(HOME)/.cargo CARGO_TARGET_DIR=target/debian-rust \
  CARGO_TARGET_$(shell echo $(RUST_TARGET) | tr a-z- A-Z_)_LINKER=$(CROSS_GCC) \
  CC_$(subst -,_,$(RUST_TARGET))=$(CROSS_GCC) /usr/bin/cargo
APPLIANCE_BIN := target/debian-rust/$(RUST_TARGET)/appliance/quince

cross-deps:
	@if ! dpkg --print-foreign-architectures | grep -qx arm64; then \
	  echo "adding arm64 as a foreign architecture (for Debian's arm64 Rust standard library)"; \
	  $(SUDO) dpkg --add-architecture arm64; \
	  $(SUDO) apt-get update -qq; \
	fi
	@missing=""; \
	for p in $(CROSS_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing (Debian's Rust cross toolchain)"; \
	  $(SUDO) apt-get update -qq; \
	  $(APT_INSTALL) $$missing; \
	fi

appliance-binary: deps cross-deps
	RUSTFLAGS="-C target-feature=+crt-static" $(DEBIAN_CARGO) build --locked --profile appliance \
	  --no-default-features --target $(RUST_TARGET) --bin quince
endif

IMAGE := $(IMAGE_DIR)/quince-$(BOARD).img
IMAGE_INPUTS := $(shell find board/common board/$(BOARD) overlay -type f 2>/dev/null)

image: image-deps appliance-binary
	@$(MAKE) --no-print-directory $(IMAGE)

# Rebuilt when the binary, a board file or the overlay changed.
$(IMAGE): $(APPLIANCE_BIN) $(IMAGE_INPUTS)
	PATH="$$PATH:/sbin:/usr/sbin" board/common/build-image.sh $(BOARD) $(APPLIANCE_BIN) $(IMAGE_DIR)

# Boots a copy of the image (so the built image stays pristine) in QEMU.
QEMU_DISK ?= target/image/qemu-disk.img
QEMU_DISK_SIZE ?= 2G
QUIC_PORT ?= 4433
SSH_PORT ?= 2222
# Your SSH public key goes into the copy's authorized_keys.
SSH_PUBKEY ?= $(firstword $(wildcard $(HOME)/.ssh/id_ed25519.pub $(HOME)/.ssh/id_ecdsa.pub $(HOME)/.ssh/id_rsa.pub))
qemu: image
	@if [ ! -x board/$(BOARD)/qemu.sh ]; then \
	  echo "error: board $(BOARD) has no QEMU machine (board/$(BOARD)/qemu.sh): it boots only on its" >&2; \
	  echo "hardware. make qemu BOARD=rpi4 runs the same arm64 system in QEMU's virt machine." >&2; \
	  exit 1; \
	fi
	cp --sparse=always $(IMAGE) $(QEMU_DISK)
	truncate -s $(QEMU_DISK_SIZE) $(QEMU_DISK)
	@echo "Booting $(QEMU_DISK) (a $(QEMU_DISK_SIZE) disk). Once it says 'listening on':"
	@echo "  invite:  mtype -i $(QEMU_DISK)@@1M ::quince-welcome.txt"
	@echo "  connect: quince register --server 127.0.0.1:$(QUIC_PORT) --invite TOKEN YOUR_NAME"
	@if [ -n "$(SSH_PUBKEY)" ]; then \
	  mcopy -o -i $(QEMU_DISK)@@1M $(SSH_PUBKEY) ::authorized_keys; \
	  echo "  ssh:     ssh -p $(SSH_PORT) root@127.0.0.1   (key $(SSH_PUBKEY))"; \
	else \
	  echo "  ssh:     no ~/.ssh/id_*.pub found; make qemu SSH_PUBKEY=FILE to log in"; \
	fi
	@echo "  quit:    Ctrl-A X, or 'poweroff' over SSH"
	QUIC_PORT=$(QUIC_PORT) SSH_PORT=$(SSH_PORT) board/$(BOARD)/qemu.sh $(IMAGE_DIR) $(QEMU_DISK)

# The image tests boot QEMU one at a time: two emulated guests on two cores
# would each run at half speed.
# A one-line GPIO chip for the image test of quince's GPIO power-loss source
# (Debian's kernels build no gpio-sim), built against the image kernel's headers.
KERNEL_VERSION = $(shell sed -n 's/^KERNEL_VERSION=//p' board/qemu-x86_64/board.conf)
KERNEL_HEADERS = /usr/src/linux-headers-$(KERNEL_VERSION)
GPIO_TEST_CHIP := target/gpio-test-chip/gpio-test-chip.ko

$(GPIO_TEST_CHIP): tests/gpio-test-chip/gpio-test-chip.c tests/gpio-test-chip/Kbuild
	@if [ ! -d $(KERNEL_HEADERS) ]; then \
	  v=$$(sed -n 's/^linux-image-$(KERNEL_VERSION)=//p' board/qemu-x86_64/packages); \
	  echo "installing linux-headers-$(KERNEL_VERSION)=$$v (for the GPIO test chip)"; \
	  $(SUDO) apt-get update -qq; \
	  $(APT_INSTALL) linux-headers-$(KERNEL_VERSION)=$$v; \
	fi
	rm -rf $(@D) && mkdir -p $(@D) && cp $^ $(@D)/
	$(MAKE) -s -C $(KERNEL_HEADERS) M=$(abspath $(@D)) modules

test-image: image-deps test-deps image $(GPIO_TEST_CHIP)
	@echo "==> cargo test --test image (boots the image in QEMU)"
	PATH="$$PATH:/sbin:/usr/sbin" QUINCE_GPIO_TEST_CHIP=$(GPIO_TEST_CHIP) \
	  $(CARGO) test --locked --test image -- --ignored --nocapture --test-threads=1

# The Raspberry Pi images, without a Pi: their SD card layout, the arm64
# quince under QEMU's user-mode emulator, and the Pi 4 image booted in QEMU's
# generic arm64 machine with the chat test.
test-pi: image-deps
	$(MAKE) --no-print-directory image BOARD=rpi4
	$(MAKE) --no-print-directory image BOARD=rpi5
	@echo "==> cargo test --test pi_image (the Pi images; boots one in qemu-system-aarch64)"
	PATH="$$PATH:/sbin:/usr/sbin" $(CARGO) test --locked --test pi_image -- --ignored --nocapture --test-threads=1

# `make test` makes 3 power cuts; this makes POWER_CUTS (each is a boot, ~20 s).
POWER_CUTS ?= 50
soak: image-deps image
	PATH="$$PATH:/sbin:/usr/sbin" QUINCE_POWER_CUTS=$(POWER_CUTS) \
	  $(CARGO) test --locked --test image power_cuts -- --ignored --nocapture

clean:
	$(CARGO) clean

include buildroot/buildroot.mk
