import math

import pytest
from rich.console import Console

from attnround_pl.mixed.allocation import Allocation, LayerBits
from attnround_pl.mixed.report import MixedReport, mixed_report, mixed_table


def _allocation(budget_mb=None):
    rows = [
        LayerBits("first", 100, math.nan, 8, True),
        LayerBits("a", 1000, 12.5, 3, False),
        LayerBits("b", 3000, 40.0, 4, False),
        LayerBits("last", 50, math.nan, 8, True),
    ]
    return Allocation(rows, 0.0316, budget_mb, [3, 4, 4])


def test_report_sizes_compare_like_with_like_and_record_the_choice():
    report = mixed_report(_allocation(budget_mb=0.002), [3, 4, 5], budget_bits=4)
    mb = 8 * 2**20
    assert report.size_mb == pytest.approx((100 * 8 + 1000 * 3 + 3000 * 4 + 50 * 8) / mb)
    assert report.single_precision_size_mb["4"] == pytest.approx((150 * 8 + 4000 * 4) / mb)
    assert (report.eps2, report.budget_mb, report.budget_bits) == (0.0316, 0.002, 4)
    assert report.cluster_bits == [3, 4, 4]
    assert [r.coding_length for r in report.layers] == [None, 12.5, 40.0, None]
    written = report.to_dict()  # report.json's "mixed" entry, and back
    assert written["layers"][1] == {"name": "a", "params": 1000, "coding_length": 12.5,
                                    "bits": 3, "fixed": False, "output_error": None}
    assert written["method"] == "coding_length"
    assert MixedReport.from_dict(written) == report
    older = {**written, "layers": [{k: v for k, v in row.items() if k != "output_error"}
                                   for row in written["layers"]]}
    del older["method"]  # a report.json written before mixed.method existed still reads
    assert MixedReport.from_dict(older) == report


def test_table_title_names_the_eps2_used_and_the_budget():
    console = Console(width=120, record=True)
    console.print(mixed_table(mixed_report(_allocation(budget_mb=0.002), [3, 4, 5], 4)))
    text = console.export_text()
    assert "(eps² 0.0316, budget 0.0020 MB)" in text and "fixed" in text
    console = Console(width=120, record=True)
    console.print(mixed_table(mixed_report(_allocation(), [3, 4, 5])))
    assert "(eps² 0.0316)" in console.export_text()
