"""The end-to-end bench's arithmetic: the Little's-law bound and steady-state throughput."""

from __future__ import annotations

import numpy as np
import pytest

from bench.e2e import E2EOptions, _stage_span, _steady, littles_law


def test_bound_is_the_smallest_stage_by_limiter_over_busy_time() -> None:
    opts = E2EOptions(voice=0.4, image=0.3, media_latency=0.2, speech_latency=0.3,
                      send_latency=0.05)
    law = littles_law(opts, {"PROCESSING_CONCURRENCY": "16",
                             "MEDIA_DOWNLOAD_CONCURRENCY": "20", "SPEECH_POOL_MAX": "10",
                             "TWILIO_POOL_MAX": "10"})
    stages = law["stages"]
    # processing holds its slot for download + transcription of the messages that need it
    assert stages["processing"]["busy_s_per_message"] == pytest.approx(0.4 * 0.5 + 0.3 * 0.2)
    assert stages["mediaDownloads"]["bound_per_s"] == pytest.approx(20 / (0.7 * 0.2), rel=1e-3)
    assert stages["speech"]["bound_per_s"] == pytest.approx(10 / 0.12, rel=1e-3)
    assert stages["twilio"]["bound_per_s"] == pytest.approx(200.0)
    assert law["limiting_stage"] == "processing"
    assert law["bound_per_s"] == pytest.approx(16 / 0.26, rel=1e-3)


def test_a_small_speech_pool_becomes_the_limit() -> None:
    opts = E2EOptions(voice=0.5, image=0.0, media_latency=0.1, speech_latency=2.0)
    law = littles_law(opts, {"SPEECH_POOL_MAX": "2", "PROCESSING_CONCURRENCY": "16"})
    assert law["limiting_stage"] == "speech"
    assert law["bound_per_s"] == pytest.approx(2 / (0.5 * 2.0))


def test_text_only_traffic_has_no_media_or_speech_stage() -> None:
    law = littles_law(E2EOptions(voice=0.0, image=0.0, send_latency=0.1), {})
    assert law["stages"]["speech"]["bound_per_s"] is None
    assert law["stages"]["processing"]["bound_per_s"] is None
    assert law["limiting_stage"] == "twilio"


def test_steady_throughput_ignores_ramp_and_drain() -> None:
    # 10/s for 10 s, preceded by a slow start and followed by a slow tail.
    times = np.concatenate([np.linspace(0, 5, 5), 5 + np.arange(100) / 10,
                            np.linspace(15, 30, 5)])
    assert _steady(times) == pytest.approx(10.0, rel=0.05)
    assert _steady(np.arange(5.0)) is None


def test_the_speech_stage_rate_spans_first_arrival_to_last_store() -> None:
    # 4 notes: the first arrives at t=10, the last is stored at t=12.
    notes = [(10.0, 10.6), (10.2, 11.0), (10.4, 11.5), (10.5, 12.0)]
    span = _stage_span(notes)
    assert span == {"count": 4, "span_s": 2.0, "per_s": 2.0}
    assert _stage_span(notes[:1]) is None
