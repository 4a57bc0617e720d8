"""Typed keys of the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from cloud_hub.hub import Hub

HUB_KEY: web.AppKey[Hub] = web.AppKey("hub", Hub)
