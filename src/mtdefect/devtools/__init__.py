"""Development tools for the tests and the benchmarks (a ``bentoml serve`` process to talk to).

The service never imports this package, and the bento does not include it.
"""
