"""Shared test set-up: one torch thread per test process (pytest -n 2 runs two on two cores), seeded draws."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors: extra OpenMP threads only add synchronisation (and over-subscribe a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # every test sees the same global draws, whatever ran before it


def pytest_terminal_summary(terminalreporter):
    """One line per Hypothesis test: how many examples it ran (the statistics Hypothesis's plugin attaches to each
    test report; works under pytest-xdist too)."""
    import re

    lines = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            stats = getattr(report, "_hypothesis_stats", None) or report.__dict__.get("_hypothesis_stats")
            if stats and getattr(report, "when", None) == "teardown":
                phases = re.findall(r"(\d+) passing, (\d+) failing, and (\d+) invalid", stats)
                ok, bad, invalid = (sum(int(p[i]) for p in phases) for i in range(3))
                lines.append(f"{report.nodeid}: {ok} passing, {bad} failing, {invalid} invalid examples")
    if lines:
        terminalreporter.section("Hypothesis example counts")
        for line in sorted(lines):
            terminalreporter.write_line(line)
