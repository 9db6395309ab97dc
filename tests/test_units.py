"""Human-readable sizes and rates, shown beside the raw numbers."""

import pytest

from records.units import human_bytes, human_rate


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (872543, "852.1 KiB"),
        (5 * 2**30, "5.0 GiB"),
        (3 * 2**40, "3.0 TiB"),
    ],
)
def test_human_bytes(num_bytes, text):
    assert human_bytes(num_bytes) == text


def test_human_rate():
    assert human_rate(3 * 2**20, 2.0) == "1.5 MiB/s"
    assert human_rate(10, 0) == "-"
