# loom — build, test and install.
#
#   make              libloom.a, libloom.so.$(VERSION) (SONAME libloom.so.$(MAJOR)), examples
#   make WITH_MQTT=0 WITH_NATS=0 WITH_AMQP=0 WITH_REDIS=0 WITH_HTTP=0
#                     an edge build without those adapters, stores and their
#                     libraries, in build/minimal (docs/abi.md, "Build options")
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
#   make check-abi      fails when libloom.so's ABI breaks against tests/abi/libloom.abi
#   make abi-baseline   rewrites that baseline (docs/abi.md says when)
#   make check-minimal  builds the edge build, runs hello on it, checks its dependencies
#   make check-contracts  the shop's OpenAPI document through @redocly/cli lint
#                     (recommended rules, 0 errors) and @seriousme/openapi-schema-validator,
#                     its AsyncAPI document through @asyncapi/parser (0 errors)
#                     (npm ci in tests/contracts; node and npm from Debian)
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
# Optional parts (docs/abi.md, "Build options"): 0 leaves the part and its
# library out. WITH_AMQP is accepted for build scripts' sake and does nothing
# yet: there is no AMQP adapter in this version.
WITH_MQTT  ?= 1
WITH_NATS  ?= 1
WITH_REDIS ?= 1
WITH_HTTP  ?= 1
WITH_AMQP  ?= 0
FEATURES_OFF := $(if $(filter 0,$(WITH_MQTT)),mqtt) $(if $(filter 0,$(WITH_NATS)),nats) \
                $(if $(filter 0,$(WITH_REDIS)),redis) $(if $(filter 0,$(WITH_HTTP)),http)
FEATURES_OFF := $(strip $(FEATURES_OFF))
FEATURE_DEFS := -DLOOM_WITH_MQTT=$(WITH_MQTT) -DLOOM_WITH_NATS=$(WITH_NATS) \
                -DLOOM_WITH_REDIS=$(WITH_REDIS) -DLOOM_WITH_HTTP=$(WITH_HTTP)

# BUILD selects a variant: release (default), asan, or minimal (the default
# when a WITH_* is 0). Each has its own tree.
BUILD   ?= release
ifneq ($(FEATURES_OFF),)
  ifeq ($(origin BUILD),file)
    BUILD := minimal
  endif
endif
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
ALL_CFLAGS := $(BASE_CFLAGS) $(FEATURE_DEFS) $(OPT) $(CFLAGS)
# What the library links: the optional parts' libraries only when built in.
OPT_LIBS := $(if $(filter 0,$(WITH_MQTT)),,-lpaho-mqtt3cs) $(if $(filter 0,$(WITH_NATS)),,-lnats) \
            $(if $(filter 0,$(WITH_REDIS)),,-lhiredis) $(if $(filter 0,$(WITH_HTTP)),,-lmicrohttpd)
DEP_LIBS := $(strip $(OPT_LIBS) -lcjson -lyaml -lsodium -lpthread)
LDFLAGS ?=

# The optional parts' sources; lib/http/off.c stands in for the bridge
# (its calls return LOOM_EUNSUPPORTED) when WITH_HTTP=0.
OFF_SRCS  := $(if $(filter 0,$(WITH_MQTT)),lib/broker/mqtt.c) \
             $(if $(filter 0,$(WITH_NATS)),lib/broker/nats.c) \
             $(if $(filter 0,$(WITH_REDIS)),lib/store/redis.c) \
             $(if $(filter 0,$(WITH_HTTP)),$(filter-out lib/http/off.c,$(wildcard lib/http/*.c)),lib/http/off.c)
LIB_SRCS  := $(filter-out $(OFF_SRCS),$(sort $(wildcard lib/*/*.c)))
LIB_OBJS  := $(LIB_SRCS:%.c=$(O)/%.o)
PIC_OBJS  := $(LIB_SRCS:%.c=$(O)/pic/%.o)

# In the release variant the libraries land at the top of the tree.
ifeq ($(BUILD),release)
  LIBDIR_OUT := .
else
  LIBDIR_OUT := $(O)
endif
STATIC := $(LIBDIR_OUT)/libloom.a
# The real file carries the full version; libloom.so.$(MAJOR) (the SONAME) and
# libloom.so (for -lloom) are links to it.
SHARED_REAL := $(LIBDIR_OUT)/libloom.so.$(VERSION)
SHARED := $(LIBDIR_OUT)/libloom.so.$(MAJOR)

# Objects remember the flags and parts they were built with: changing a
# WITH_* (or CFLAGS) in one tree rebuilds it instead of mixing objects.
FLAGS_STAMP := $(O)/.flags
FLAGS_NOW := $(ALL_CFLAGS)
$(shell mkdir -p $(O) && { [ -f $(FLAGS_STAMP) ] && [ "$$(cat $(FLAGS_STAMP))" = '$(FLAGS_NOW)' ] \
        || echo '$(FLAGS_NOW)' > $(FLAGS_STAMP); })

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

.PHONY: all lib examples demo test check asan check-symbols install uninstall deps clean \
        tests pkgconfig-test format bench fuzz check-api check-abi abi-baseline check-minimal check-contracts

all: lib examples
ifneq ($(FEATURES_OFF),)
	@echo "edge build (without $(FEATURES_OFF)) in $(O): libloom.a, libloom.so.$(VERSION), examples/hello/hello"
endif

lib: $(STATIC) $(SHARED)

$(O)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(O)/pic/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fPIC -fvisibility=hidden -MMD -MP -c $< -o $@

$(STATIC): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(SHARED_REAL): $(PIC_OBJS)
	@mkdir -p $(dir $@)
	$(CC) -shared -Wl,-soname,libloom.so.$(MAJOR) -Wl,--no-undefined $(SAN_LDFLAGS) \
	  -o $@ $^ $(LDFLAGS) $(DEP_LIBS)

$(SHARED): $(SHARED_REAL)
	ln -sf libloom.so.$(VERSION) $@
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

# The ABI of libloom.so against the committed baseline of the last release
# (docs/abi.md): abidiff on the release build, which has -g.
ABI_BASELINE := tests/abi/libloom.abi
check-abi: $(SHARED)
	@tests/abi/check-abi.sh $(SHARED_REAL) $(ABI_BASELINE)

abi-baseline: $(SHARED)
	abidw --headers-dir include --drop-private-types --no-corpus-path \
	  --out-file $(ABI_BASELINE) $(SHARED_REAL)
	@echo "abi-baseline: wrote $(ABI_BASELINE) for $(VERSION); commit it with the release"

# The edge builds: without the brokers and Redis (build/minimal-http), and
# without anything optional (build/minimal). hello runs on both, left-out
# parts are refused clearly, neither ldd nor pkg-config names their libraries.
MINIMAL := WITH_MQTT=0 WITH_NATS=0 WITH_AMQP=0 WITH_REDIS=0
check-minimal:
	$(MAKE) BUILD=minimal-http $(MINIMAL) lib examples loom.pc
	$(MAKE) BUILD=minimal $(MINIMAL) WITH_HTTP=0 lib examples loom.pc
	@tests/check-minimal.sh build/minimal-http build/minimal

pkgconfig-test: lib
	@tests/pkgconfig-test.sh

check-contracts: $(filter %shop/shop,$(EXAMPLES))
	@tests/contracts/check.sh $(filter %shop/shop,$(EXAMPLES))

test: deps
	@rm -f build/release/summary build/asan/summary
	$(MAKE) all
	$(MAKE) check
	$(MAKE) asan
	$(MAKE) fuzz FUZZ_SECONDS=20
	$(MAKE) valgrind
	$(MAKE) check-symbols
	$(MAKE) check-api
	$(MAKE) check-abi
	$(MAKE) check-minimal
	$(MAKE) pkgconfig-test
	$(MAKE) check-contracts
	@cat build/release/summary build/asan/summary | \
	  awk '{p += $$1; f += $$2} END {print "make test: release and ASan+UBSan runs, fuzz smoke, valgrind, symbols, ABI, edge build, pkg-config build, contracts"; \
	       printf "%d passed, %d failed\n", p, f; exit f > 0}'

demo: deps all
	examples/shop/demo.sh

# --- install ---------------------------------------------------------------

PC := $(if $(filter .,$(LIBDIR_OUT)),loom.pc,$(LIBDIR_OUT)/loom.pc)
DOCDIR ?= $(PREFIX)/share/doc/loom

# Libs.private lists exactly what this build links (DEP_LIBS). Always
# regenerated: PREFIX may differ from the last run.
.PHONY: $(PC)
$(PC): pkgconfig/loom.pc.in include/loom/version.h
	@mkdir -p $(dir $@)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCDIR@|$(INCDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@LIBS_PRIVATE@|$(filter-out -lcjson,$(DEP_LIBS))|g' $< > $@

ifneq ($(PC),loom.pc)
.PHONY: loom.pc
loom.pc: $(PC)
endif

install: lib $(PC)
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR)/loom $(DESTDIR)$(DOCDIR)
	install -m 644 include/loom.h $(DESTDIR)$(INCDIR)/loom.h
	install -m 644 include/loom/*.h $(DESTDIR)$(INCDIR)/loom/
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/libloom.a
	install -m 755 $(SHARED_REAL) $(DESTDIR)$(LIBDIR)/libloom.so.$(VERSION)
	ln -sf libloom.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libloom.so.$(MAJOR)
	ln -sf libloom.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libloom.so
	install -m 644 $(PC) $(DESTDIR)$(LIBDIR)/pkgconfig/loom.pc
	install -m 644 README.md LICENSE docs/*.md $(DESTDIR)$(DOCDIR)/

uninstall:
	rm -f $(DESTDIR)$(INCDIR)/loom.h $(DESTDIR)$(LIBDIR)/libloom.a \
	      $(DESTDIR)$(LIBDIR)/libloom.so $(DESTDIR)$(LIBDIR)/libloom.so.$(MAJOR) \
	      $(DESTDIR)$(LIBDIR)/libloom.so.$(VERSION) $(DESTDIR)$(LIBDIR)/pkgconfig/loom.pc
	rm -rf $(DESTDIR)$(INCDIR)/loom $(DESTDIR)$(DOCDIR)

# --- dependencies ----------------------------------------------------------

DEB_PACKAGES := build-essential pkg-config libpaho-mqtt-dev libcjson-dev libyaml-dev \
                libcmocka-dev libmicrohttpd-dev libcurl4-openssl-dev mosquitto \
                mosquitto-clients curl clang libclang-rt-14-dev valgrind \
                libnats-dev nats-server libhiredis-dev redis-server nginx-light libsodium-dev \
                locales-all abigail-tools
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
	@# node and npm for check-contracts; any node >= 20.19 already installed will do.
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  echo "deps: installing nodejs npm"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nodejs npm; \
	fi

# --- benchmarks (`make bench`; never part of `make test`) ---------------------
# Installs the load tools, builds the library, the examples and bench/*.c with
# release flags (-O2, no sanitizers) in build/bench (bench_schema with the old
# validator from git, see SCHEMA_REF_REV), installs ajv with npm ci
# (bench/schema/ajv; node and npm must be present), then runs bench/run.sh:
# tables on stdout and docs/performance.md, in about 8 minutes on 2 CPUs.
# BENCH_SCALE=0.3 BENCH_REPS=1 make bench is a quick smoke run.
# libh2o-evloop-dev: bench/ref_h2o, the h2o side of `make bench-httpab`.
BENCH_PACKAGES := wrk nginx-light mosquitto nats-server valgrind python3 libh2o-evloop-dev
BENCH_PROGS    := bench_invoke bench_events bench_routes bench_sign bench_schema ref_mqtt_rr ref_nats_rr \
                  ref_h2o

.PHONY: bench-deps bench-build bench-httpab

bench: bench-deps
	$(MAKE) BUILD=bench bench-build
	$(MAKE) BUILD=minimal $(MINIMAL) WITH_HTTP=0 lib examples
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

# The raw paho reference is paho's asynchronous client, the one a minimal
# request/reply program uses; loom is not linked into it.
$(O)/bench/ref_mqtt_rr: bench/ref_mqtt_rr.c bench/bench.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LDFLAGS) -lpaho-mqtt3as -lpthread

# h2o 2.2.5 (its own event loop), a reference HTTP/1.1 server; loom is not
# linked into it.
$(O)/bench/ref_h2o: bench/ref_h2o.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< -lh2o-evloop

# The HTTP/1.1 A/B of the bridge (libmicrohttpd) and h2o: the probes of
# test_hostile and wrk -t2 -c64 on GET /healthz (docs/security.md "h2o A/B");
# about a minute. Not part of `make bench`.
bench-httpab: bench-deps
	$(MAKE) BUILD=bench lib examples build/bench/bench/ref_h2o
	python3 bench/http_ab.py build/bench

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
