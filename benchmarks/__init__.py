"""jaxcurv's benchmark suite: ``python -m benchmarks.run [--quick]`` (never part of the tests).

Every script shares one method (:mod:`benchmarks.common`): warm-up, ``block_until_ready``,
compile time reported apart, median and min-max of many repeats, A/B interleaved, the
environment recorded, and a check that the compared things compute the same numbers before
they are timed. Each script writes ``benchmarks/results/<backend>/<name>.json``;
:mod:`benchmarks.report` turns those files into ``BENCHMARKS.md``.
"""
