"""The demo's settings (:mod:`tokensidecar.demo.settings`): the flows it runs and how often.

A unit test, beside the package it mirrors; the demo itself runs end to end in
tests/e2e/test_demo.py."""

from __future__ import annotations

import dataclasses

import pytest

from tokensidecar.config import resolve
from tokensidecar.demo.settings import SETTINGS as DEMO_SETTINGS
from tokensidecar.demo.settings import DemoSettings


def test_the_demo_settings_list_the_flows() -> None:
    settings = DemoSettings.resolve(resolve(DEMO_SETTINGS, {"demo_flow": "gateway"}, {}))
    assert (settings.flows, settings.rotations, settings.forever) == (("gateway",), 3, False)


def test_the_demo_settings_are_frozen() -> None:
    frozen = DemoSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(frozen, dataclasses.fields(frozen)[0].name, None)
