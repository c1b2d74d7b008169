"""The services' metrics: labelled children looked up once, counted on every call."""

from __future__ import annotations

from edgepart.partition_service.metrics import ServiceMetrics


def test_reasons_and_decisions_count_on_their_own_series_every_time() -> None:
    metrics = ServiceMetrics("d", "1", "s1p0")
    for _ in range(3):
        metrics.error("timeout")
        metrics.admission("admitted")
    metrics.error("overloaded")
    metrics.dropped("send")
    text = metrics.render().decode()
    start = 'deployment="d",partition="s1p0"'
    assert f'edgepart_errors_total{{{start},reason="timeout",stage="1"}} 3.0' in text
    assert f'edgepart_errors_total{{{start},reason="overloaded",stage="1"}} 1.0' in text
    assert f'edgepart_dropped_total{{{start},reason="send",stage="1"}} 1.0' in text
    assert f'edgepart_admission_total{{decision="admitted",{start},stage="1"}} 3.0' in text
