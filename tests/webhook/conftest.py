"""Fixtures for these tests: real apps, a fake Twilio, an HTTP client (see helpers)."""

from tests.webhook.helpers import apps, fake_twilio, http

__all__ = ["apps", "fake_twilio", "http"]
