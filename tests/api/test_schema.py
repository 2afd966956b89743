"""The OpenAPI schema generates without a warning, and the docs pages use local files only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.urls import reverse

from tests.api.clients import client_as

ASSET = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")


def test_the_schema_generates_and_validates_without_warnings(tmp_path: Path):
    schema = tmp_path / "schema.yml"
    # A subprocess: spectacular reports each warning once per process, so an earlier
    # generation in this test process could hide one.
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "spectacular",
            "--validate",
            "--fail-on-warn",
            "--file",
            str(schema),
        ],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert "Error" not in result.stderr, result.stderr
    assert "/api/v1/devices/{key}/shadow/:" in schema.read_text()


@pytest.mark.parametrize("page", ["api-docs", "api-redoc"])
def test_a_docs_page_answers_a_logged_in_user(page, alice):
    response = client_as(alice).get(reverse(page))
    assert response.status_code == 200
    assert reverse("api-schema") in response.content.decode()


@pytest.mark.parametrize("page", ["api-docs", "api-redoc"])
def test_a_docs_page_loads_only_local_static_files(page, alice):
    html = client_as(alice).get(reverse(page)).content.decode()
    assets = ASSET.findall(html)
    assert assets, "the page should load the UI's script and styles"
    assert "googleapis" not in html
    assert "cdn" not in html.lower()
    for url in assets:
        assert url.startswith(settings.STATIC_URL), (
            f"{url} is not served from {settings.STATIC_URL}"
        )
        relative = url.split(settings.STATIC_URL, 1)[1]
        assert finders.find(relative), f"{url} is not a local static file"


def test_swagger_ui_does_not_call_the_online_validator(alice):
    html = client_as(alice).get(reverse("api-docs")).content.decode()
    assert '"validatorUrl": null' in html
