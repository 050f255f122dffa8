# stripe_sync: the two commands a newcomer needs.
.PHONY: test demo demo-stop setup lint bench chaos

test:            ## run every test (installs what is missing first)
	scripts/test

demo:            ## start a cluster + the fake Stripe and show stripe_sync at work
	scripts/demo

demo-stop:       ## stop what `make demo` started
	scripts/demo stop

bench:           ## benchmarks (release build): table + bench/out/{results.md,results.csv,refresh_throughput.png}
	scripts/bench

chaos:           ## fault scenarios at full length
	scripts/chaos

setup:           ## install the toolchain pieces only
	scripts/setup

lint:            ## formatting and clippy
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
