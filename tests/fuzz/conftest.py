"""Hypothesis profiles of the fuzz harness, and a summary of how many inputs each loader was given.

- ``fuzz``: the default CI share, seeded (``derandomize=True``: every run tries the same inputs), no example
  database written, no deadline (a loader may take a while on its first input); each test sets its own few-hundred
  ``max_examples``.
- ``fuzz-slow``: the same with 10,000 examples per loader, for the ``slow``-marked variants (``pytest -m slow``).
"""

from collections import Counter

import fuzz_support
from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("fuzz-slow", settings.get_profile("fuzz"), max_examples=fuzz_support.SLOW_EXAMPLES)


def pytest_terminal_summary(terminalreporter):
    if not fuzz_support.OUTCOMES:
        return
    terminalreporter.section("fuzz inputs per loader")
    for loader, outcomes in sorted(fuzz_support.OUTCOMES.items()):
        counts: Counter = outcomes
        terminalreporter.write_line(f"{loader}: {sum(counts.values())} inputs ({counts['loaded']} loaded, "
                                    f"{counts['error']} one-line errors)")
        if terminalreporter.config.option.verbose > 0:
            for message, count in fuzz_support.MESSAGES[loader].most_common(8):
                terminalreporter.write_line(f"    {count:5d}  {message}")
