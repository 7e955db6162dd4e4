"""The benchmark's scenarios, one module each, run in order by bench/run.py. A scenario module has:
KEY and NAME ("1", "throughput") and SCENARIO, its rows' label ("1 throughput"); add_options(group),
its own command-line options; SMOKE, the option values --smoke sets; run(args, results), which starts
its clusters (bench/clusters.py), measures, adds its rows and details, and stops what it started."""
