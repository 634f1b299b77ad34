"""Test helper: read a server's ``/metrics`` and check it with Prometheus' own tools.

``promtool`` and ``prometheus`` come with Debian's ``prometheus`` package (``.ci/run`` installs
it); a test that needs one skips, naming the package, where it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families


def tool(name: str) -> str:
    """The path of Prometheus' ``name`` (promtool, prometheus), else skip the test."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs {name}: apt-get install prometheus (Debian's package)")
    return path


def get(url: str, token: str | None = None) -> tuple[int, str]:
    """``GET url`` (with ``Authorization: Bearer token`` when given): (status, body)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                 if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(base_url: str, token: str | None = None) -> str:
    """The text of ``base_url/metrics`` (asserting 200)."""
    status, text = get(base_url + "/metrics", token)
    assert status == 200, text
    return text


def check_metrics(text: str) -> None:
    """``promtool check metrics`` accepts ``text`` (no lint problem either)."""
    done = subprocess.run([tool("promtool"), "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


class Samples:
    """The samples of one scrape, looked up by name and labels."""

    def __init__(self, text: str) -> None:
        self.rows = [(s.name, s.labels, s.value)
                     for family in text_string_to_metric_families(text)
                     for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The one sample ``name`` whose labels include ``labels`` (KeyError when none)."""
        found = [v for n, ls, v in self.rows
                 if n == name and all(ls.get(k) == x for k, x in labels.items())]
        if len(found) != 1:
            raise KeyError(f"{len(found)} samples {name}{labels}")
        return found[0]

    def sum(self, name: str, **labels: str) -> float:
        """The sum over every sample ``name`` whose labels include ``labels``."""
        return sum(v for n, ls, v in self.rows
                   if n == name and all(ls.get(k) == x for k, x in labels.items()))

    def labelled(self, name: str, label: str) -> dict[str, float]:
        """{value of ``label``: sample} of the samples ``name``."""
        return {ls[label]: v for n, ls, v in self.rows if n == name and label in ls}
