"""The composition root: the only gateway module that imports `admin`."""

from __future__ import annotations

from starlette.applications import Starlette

from admin import control_plane
from gateway.app import create_app
from gateway.settings import Settings


def build_app(settings: Settings) -> Starlette:
    return create_app(settings, control_plane())
