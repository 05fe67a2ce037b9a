"""The app tunes CPython's cyclic GC for many requests in flight while it runs, and undoes it after."""

from __future__ import annotations

import gc
from collections.abc import Callable

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_while_serving_the_gc_threshold_is_raised_and_start_up_is_frozen_then_both_are_restored(
        make_settings: Callable[..., Settings]) -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(make_settings(ivy_gc_gen0_threshold=12_345))) as client:
        assert client.post("/ai/router/v2", json={"query": "hello"}, headers={"X-User-ID": "u1"}).status_code == 200
        assert gc.get_threshold() == (12_345, *before[1:])
        assert gc.get_freeze_count() > 1000  # the app, its clients and every module loaded so far
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
