"""scorelab's benchmarks: a package of experiments, each run from the repository root as `python -m bench.<name>`.

Every script writes one result record, bench/results/<name>.json, through `bench.record.write` (the command line,
git revision, date, torch version and threads, the machine, the network used, and the rows); `python -m
bench.pages --out DIR` turns the records into Markdown pages for the documentation site, and `python -m
bench.run_all [--quick]` runs the set. The library never imports this package.
"""
