"""``skinedge bench``: latency, memory and accuracy parity of every format, side by side.

``run_bench`` (harness), ``check_gates`` (CI budgets), ``write_outputs`` (JSON, Markdown,
JUnit XML, chart); each model is measured by ``python -m skinedge.bench.worker``.
"""
