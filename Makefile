# loom — build, test and install.
#
#   make              libloom.a, libloom.so.$(MAJOR), examples
#   make demo         the shop, monolithic, with the HTTP bridge on 127.0.0.1:8080
#   make test         everything CI runs: deps, unit + integration tests,
#                     the same under ASan+UBSan, a 20 s fuzz run per target,
#                     the integration tests under valgrind, exported-symbol
#                     check, out-of-tree pkg-config build
#   make check        unit + integration tests (release build)
#   make asan         the test suite under AddressSanitizer + UBSan
#   make fuzz         every libFuzzer target for FUZZ_SECONDS (default 30) each
#   make valgrind     the integration tests (and the programs they start)
#                     under valgrind memcheck
#   make check-symbols  fails when libloom.so exports a symbol without loom_
#   make check-api      fails when an exported loom_ function is missing from docs/api.md
#   make install PREFIX=/usr/local DESTDIR=   /  make uninstall
#   make deps         installs the Debian packages that are missing
#   make clean

MAJOR   := $(shell sed -n 's/^\#define LOOM_VERSION_MAJOR \([0-9]*\)/\1/p' include/loom/version.h)
VERSION := $(shell sed -n 's/^\#define LOOM_VERSION_STRING "\(.*\)"/\1/p' include/loom/version.h)

PREFIX  ?= /usr/local
DESTDIR ?=
LIBDIR  ?= $(PREFIX)/lib
INCDIR  ?= $(PREFIX)/include

CC      ?= cc
# BUILD selects a variant: release (default) or asan. Each has its own tree.
BUILD   ?= release
O       := build/$(BUILD)

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-missing-field-initializers
BASE_CFLAGS := -std=gnu11 -g $(WARN) -Iinclude -Ilib -pthread
ifeq ($(BUILD),asan)
  OPT := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
  SAN_LDFLAGS := -fsanitize=address,undefined
else
  OPT := -O2
  SAN_LDFLAGS :=
endif
CFLAGS  ?=
ALL_CFLAGS := $(BASE_CFLAGS) $(OPT) $(CFLAGS)
DEP_LIBS := -lpaho-mqtt3as -lnats -lhiredis -lcjson -lyaml -lmicrohttpd -lsodium -lpthread
LDFLAGS ?=

LIB_SRCS  := $(sort $(wildcard lib/*/*.c))
LIB_OBJS  := $(LIB_SRCS:%.c=$(O)/%.o)
PIC_OBJS  := $(LIB_SRCS:%.c=$(O)/pic/%.o)

# In the release variant the libraries land at the top of the tree.
ifeq ($(BUILD),release)
  LIBDIR_OUT := .
else
  LIBDIR_OUT := $(O)
endif
STATIC := $(LIBDIR_OUT)/libloom.a
SHARED := $(LIBDIR_OUT)/libloom.so.$(MAJOR)

EXAMPLES := examples/hello/hello examples/shop/shop
ifneq ($(BUILD),release)
  EXAMPLES := $(EXAMPLES:%=$(O)/%)
endif

SHOP_SRCS := $(sort $(wildcard examples/shop/*.c))

TEST_SRCS    := $(sort $(wildcard tests/test_*.c))
TEST_SUPPORT := $(sort $(wildcard tests/support/*.c))
TEST_BINS    := $(TEST_SRCS:tests/%.c=$(O)/tests/%)
TEST_LIBS    := -lcmocka -lcurl
# Helper programs the tests start as subprocesses (next to the test binaries).
TEST_HELPERS := $(O)/tests/fault_service

.PHONY: loom.pc all lib examples demo test check asan check-symbols install uninstall deps clean \
        tests pkgconfig-test format bench fuzz check-api

all: lib examples

lib: $(STATIC) $(SHARED)

$(O)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(O)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fPIC -fvisibility=hidden -MMD -MP -c $< -o $@

$(STATIC): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(SHARED): $(PIC_OBJS)
	@mkdir -p $(dir $@)
	$(CC) -shared -Wl,-soname,libloom.so.$(MAJOR) -Wl,--no-undefined $(SAN_LDFLAGS) \
	  -o $@ $^ $(LDFLAGS) $(DEP_LIBS)
	ln -sf libloom.so.$(MAJOR) $(LIBDIR_OUT)/libloom.so

examples: $(EXAMPLES)

# Examples link the static library so they run from the tree without LD_LIBRARY_PATH.
$(filter %hello/hello,$(EXAMPLES)): examples/hello/hello.c $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_LDFLAGS) -o $@ $< $(STATIC) $(LDFLAGS) $(DEP_LIBS)

$(filter %shop/shop,$(EXAMPLES)): $(SHOP_SRCS) examples/shop/shop.h $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_LDFLAGS) -o $@ $(SHOP_SRCS) $(STATIC) $(LDFLAGS) $(DEP_LIBS)

# --- tests -----------------------------------------------------------------

$(O)/tests/%: tests/%.c $(TEST_SUPPORT) $(wildcard tests/support/*.h) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests -MMD -MP $(SAN_LDFLAGS) -o $@ $< $(TEST_SUPPORT) $(STATIC) \
	  $(LDFLAGS) $(DEP_LIBS) $(TEST_LIBS)

# The shop's own tests through the test kit link the shop's services (not its main).
SHOP_SERVICE_SRCS := $(filter-out examples/shop/main.c,$(SHOP_SRCS))
$(O)/tests/test_shop_kit: tests/test_shop_kit.c $(SHOP_SERVICE_SRCS) examples/shop/shop.h $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Iexamples/shop -MMD -MP $(SAN_LDFLAGS) -o $@ $< $(SHOP_SERVICE_SRCS) \
	  $(STATIC) $(LDFLAGS) $(DEP_LIBS) -lcmocka

$(O)/tests/fault_service: tests/fault_service.c $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_LDFLAGS) -o $@ $< $(STATIC) $(LDFLAGS) $(DEP_LIBS)

tests: $(TEST_BINS) $(TEST_HELPERS) $(EXAMPLES)

# Runs every test binary; a failure fails the target after all have run.
# LOOM_TEST_BUILD tells tests where this variant's examples are,
# LOOM_TEST_HELPERS where its test helper programs are.
check: tests
	@LOOM_TEST_BUILD=$(if $(filter release,$(BUILD)),.,$(O)) LOOM_TEST_HELPERS=$(O)/tests \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
	  LOOM_SUMMARY=$(O)/summary tests/run-all.sh $(TEST_BINS)

asan:
	$(MAKE) BUILD=asan check

check-symbols: $(SHARED)
	@bad=$$(nm -D --defined-only $(SHARED) | awk '$$2 ~ /^[TDBRVW]$$/ {print $$3}' \
	        | grep -v '^loom_' | grep -v '^_' ); \
	if [ -n "$$bad" ]; then echo "check-symbols: exported without the loom_ prefix:"; \
	  echo "$$bad"; exit 1; fi; \
	n=$$(nm -D --defined-only $(SHARED) | grep -c ' T loom_'); \
	echo "check-symbols: $$n exported functions, all prefixed loom_"

check-api: $(SHARED)
	@tests/check-api-doc.sh $(SHARED)

pkgconfig-test: lib
	@tests/pkgconfig-test.sh

test: deps
	@rm -f build/release/summary build/asan/summary
	$(MAKE) all
	$(MAKE) check
	$(MAKE) asan
	$(MAKE) fuzz FUZZ_SECONDS=20
	$(MAKE) valgrind
	$(MAKE) check-symbols
	$(MAKE) check-api
	$(MAKE) pkgconfig-test
	@cat build/release/summary build/asan/summary | \
	  awk '{p += $$1; f += $$2} END {print "make test: release and ASan+UBSan runs, fuzz smoke, valgrind, symbols, pkg-config build"; \
	       printf "%d passed, %d failed\n", p, f; exit f > 0}'

demo: deps all
	examples/shop/demo.sh

# --- install ---------------------------------------------------------------

loom.pc: pkgconfig/loom.pc.in include/loom/version.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCDIR@|$(INCDIR)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@

install: lib loom.pc
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR)/loom
	install -m 644 include/loom.h $(DESTDIR)$(INCDIR)/loom.h
	install -m 644 include/loom/*.h $(DESTDIR)$(INCDIR)/loom/
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/libloom.a
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/libloom.so.$(MAJOR)
	ln -sf libloom.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libloom.so
	install -m 644 loom.pc $(DESTDIR)$(LIBDIR)/pkgconfig/loom.pc

uninstall:
	rm -f $(DESTDIR)$(INCDIR)/loom.h $(DESTDIR)$(LIBDIR)/libloom.a \
	      $(DESTDIR)$(LIBDIR)/libloom.so $(DESTDIR)$(LIBDIR)/libloom.so.$(MAJOR) \
	      $(DESTDIR)$(LIBDIR)/pkgconfig/loom.pc
	rm -rf $(DESTDIR)$(INCDIR)/loom

# --- dependencies ----------------------------------------------------------

DEB_PACKAGES := build-essential pkg-config libpaho-mqtt-dev libcjson-dev libyaml-dev \
                libcmocka-dev libmicrohttpd-dev libcurl4-openssl-dev mosquitto \
                mosquitto-clients curl clang libclang-rt-14-dev valgrind \
                libnats-dev nats-server libhiredis-dev redis-server nginx-light libsodium-dev \
                locales-all
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi

# --- benchmarks (`make bench`; never part of `make test`) ---------------------
# Installs the load tools, builds the library, the examples and bench/*.c with
# release flags (-O2, no sanitizers) in build/bench (bench_schema with the old
# validator from git, see SCHEMA_REF_REV), installs ajv with npm ci
# (bench/schema/ajv; node and npm must be present), then runs bench/run.sh:
# tables on stdout and docs/performance.md, in about 8 minutes on 2 CPUs.
# BENCH_SCALE=0.3 BENCH_REPS=1 make bench is a quick smoke run.
BENCH_PACKAGES := wrk nginx-light mosquitto nats-server valgrind python3
BENCH_PROGS    := bench_invoke bench_events bench_routes bench_sign bench_schema ref_mqtt_rr ref_nats_rr

.PHONY: bench-deps bench-build

bench: bench-deps
	$(MAKE) BUILD=bench bench-build
	bench/run.sh

bench-deps: deps
	@missing=""; for p in $(BENCH_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' \
	    || missing="$$missing $$p"; done; \
	SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	if [ -n "$$missing" ]; then \
	  echo "bench-deps: installing$$missing"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi; \
	if ! command -v perf >/dev/null; then \
	  echo "bench-deps: installing linux-perf (optional: profiles of missed targets)"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq --no-install-recommends linux-perf; } \
	    || echo "bench-deps: no perf; profiles are skipped"; \
	fi

bench-build: lib examples $(BENCH_PROGS:%=$(O)/bench/%) bench-ajv

# bench_schema's reference: the validator before the draft 2020-12 rewrite
# (the first parent of its merge, a19b9a8), its schema.c and regex.c taken
# from git into $(O)/bench/schema_ref and built with this tree's flags, their
# symbols renamed loom__* -> ref_loom__* so both validators link into one
# program. No copy of the old source is kept in the tree.
SCHEMA_REF_REV := c5fdf00b51728f78d6be04954f1322a2579f8f0d
SREF := $(O)/bench/schema_ref

$(SREF)/schema_ref.o: Makefile
	@mkdir -p $(SREF)/codec
	@for f in schema.c schema.h regex.c regex.h; do \
	  git show $(SCHEMA_REF_REV):lib/codec/$$f > $(SREF)/codec/$$f || { \
	    echo "bench: cannot read lib/codec/$$f at $(SCHEMA_REF_REV) (the old validator," \
	         "bench_schema's reference): make bench needs the git history" >&2; exit 1; }; \
	done
	$(CC) -I$(SREF) $(ALL_CFLAGS) -c $(SREF)/codec/schema.c -o $(SREF)/schema.o
	$(CC) -I$(SREF) $(ALL_CFLAGS) -c $(SREF)/codec/regex.c -o $(SREF)/regex.o
	ld -r $(SREF)/schema.o $(SREF)/regex.o -o $(SREF)/both.o
	nm -g --defined-only $(SREF)/both.o | awk '{print $$3, "ref_" $$3}' > $(SREF)/rename
	objcopy --redefine-syms=$(SREF)/rename $(SREF)/both.o $@

$(O)/bench/bench_schema: bench/bench_schema.c bench/bench.h $(SREF)/schema_ref.o $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(SREF)/schema_ref.o $(STATIC) $(LDFLAGS) $(DEP_LIBS)

# ajv (npm, exact versions in package-lock.json), bench_schema's other reference.
.PHONY: bench-ajv
bench-ajv:
	@command -v npm >/dev/null || { echo "bench: npm is missing (ajv is a reference)" >&2; exit 1; }
	cd bench/schema/ajv && npm ci --no-audit --no-fund --loglevel=error

$(O)/bench/%: bench/%.c bench/bench.h $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(STATIC) $(LDFLAGS) $(DEP_LIBS)

# --- fuzzing (clang + libFuzzer) ---------------------------------------------

FUZZ_SECONDS ?= 30
FZ := build/fuzz
FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=$(FZ)/%)
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS := -std=gnu11 -g -O1 -Iinclude -Ilib -pthread $(FUZZ_SAN) -fsanitize=fuzzer-no-link
FUZZ_OBJS := $(LIB_SRCS:%.c=$(FZ)/%.o)

$(FZ)/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@

$(FZ)/libloom-fuzz.a: $(FUZZ_OBJS)
	rm -f $@
	ar rcs $@ $^

$(FZ)/fuzz_%: tests/fuzz/fuzz_%.c $(FZ)/libloom-fuzz.a
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FZ)/libloom-fuzz.a $(DEP_LIBS)

fuzz: $(FUZZ_BINS)
	@tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_BINS)

# --- valgrind (`make valgrind`, part of `make test`: about 3 minutes) -------------
# The integration tests on the release build under memcheck, with the loom
# programs they start (shop, fault service) under it too: zero errors and no
# definite leak, in any process. Logs in build/valgrind/.
VALGRIND_TESTS := test_split test_faults test_http test_shop_cli

.PHONY: valgrind
valgrind: deps
	$(MAKE) BUILD=release tests
	@LOOM_TEST_BUILD=. LOOM_TEST_HELPERS=build/release/tests \
	  tests/valgrind.sh $(VALGRIND_TESTS:%=build/release/tests/%)

format:
	clang-format -i include/*.h include/loom/*.h lib/*/*.[ch] tests/*.c tests/support/*.[ch] \
	  examples/*/*.[ch]

clean:
	rm -rf build libloom.a libloom.so libloom.so.* loom.pc $(EXAMPLES) \
	  examples/hello/hello examples/shop/shop

-include $(shell find build -name '*.d' 2>/dev/null)
