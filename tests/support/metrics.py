"""Reading a service's /metrics as Prometheus would: the text format parsed, samples summed."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


async def scrape(where: tuple[str, int] | str | None) -> str:
    """The /metrics text of ``where``: an (host, port) address or a full URL."""
    assert where is not None
    url = where if isinstance(where, str) else f"http://{where[0]}:{where[1]}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.text()


_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created")


def value(text: str, sample: str, default: float | None = None, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels``.

    A name the text does not export at all always fails (a renamed metric must not read as 0);
    a known metric with no sample for ``labels`` fails too, unless ``default`` says what an
    absent series means (e.g. ``default=0`` for a labelled counter never incremented)."""
    total = 0.0
    matched = False
    known = False
    for family in text_string_to_metric_families(text):
        if family.name == sample or any(sample == family.name + suffix for suffix in _SUFFIXES):
            known = True
        for s in family.samples:
            if s.name == sample:
                known = True
                if all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
                    matched = True
    assert known, f"no metric {sample} in the scrape"
    if not matched:
        assert default is not None, f"no sample {sample}{labels} in the scrape"
        return default
    return total


def samples(text: str, sample: str) -> list[Sample]:
    """Every sample named ``sample``, with its labels."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == sample]


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}
