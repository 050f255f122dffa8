# stripe_sync: the two commands a newcomer needs.
.PHONY: test installcheck demo demo-stop setup lint bench chaos

test:            ## run every test (installs what is missing first)
	scripts/test

installcheck:    ## the golden SQL suite only (tests/pg_regress), against the fake Stripe
	scripts/installcheck

demo:            ## start a cluster + the fake Stripe and show stripe_sync at work
	scripts/demo

demo-stop:       ## stop what `make demo` started
	scripts/demo stop

bench:           ## benchmarks (release build): table + bench/out/{results.md,results.csv,refresh_throughput.png}
	scripts/bench

chaos:           ## fault scenarios at full length
	scripts/chaos $(ARGS)

setup:           ## install the toolchain pieces only
	scripts/setup

lint:            ## rustfmt, clippy -D warnings, resource names only in the registry, no unused pub fns
	scripts/lint
