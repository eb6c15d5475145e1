"""The browser tests' Chromium and page (tests/server/browser.py); each browser test module gives the `server`."""

from __future__ import annotations

import pytest

from tests.server import browser as bt


@pytest.fixture(scope="module")
def browser():
    with bt.chromium(bt.require()) as b:
        yield b


@pytest.fixture
def page(browser, server):
    with bt.offline_page(browser, server["base"], accept_downloads=True) as pg:
        yield pg
