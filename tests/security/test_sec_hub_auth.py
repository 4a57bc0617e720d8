"""Every hub route, enumerated from the router: the operator token is required where it must be, and only there."""

from __future__ import annotations

import json
import re

import aiohttp
from sec_support import HubApi, app_routes

from cloud_hub.api.app import build_app
from cloud_hub.api.openapi import openapi_document
from cloud_hub.app import Hub

# The only routes that answer without the operator token (route templates). Adding one is a security
# decision: it must be added here, and to docs/security.md, on purpose.
PUBLIC = {"/healthz", "/metrics", "/api/v1/ca", "/api/v1/ca.pem", "/api/v1/provision"}
# Authenticated by the handler itself: a device certificate from the hub CA, or the operator token.
DEVICE_OR_OPERATOR = {"/api/v1/artifacts/{sha256}.tar"}


def _bad_authorizations(token: str) -> list[dict[str, str]]:
    return [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Bearer {token[:-1]}"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},
        {"Authorization": f"Bearer {token.upper()}"},
    ]


async def test_every_operator_route_refuses_missing_and_wrong_tokens(hub: Hub, api: HubApi) -> None:
    routes = [r for r in app_routes(build_app(hub)) if r.template not in PUBLIC | DEVICE_OR_OPERATOR]
    assert len(routes) >= 25, routes  # GET + HEAD + POST of the operator API; new routes join automatically
    tried = 0
    async with aiohttp.ClientSession() as session:
        for route in routes:
            for headers in _bad_authorizations(api.token):
                async with session.request(
                    route.method, api.url + route.path, headers=headers, ssl=api.ssl(), json={}
                ) as resp:
                    body = await resp.read()
                    assert resp.status == 401, (route, headers, body)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    if route.method != "HEAD":
                        assert set(json.loads(body)) == {"error"}, body
                    tried += 1
            # ...and the real token gets past authentication (whatever the handler then says).
            async with session.request(
                route.method, api.url + route.path, headers={"Authorization": f"Bearer {api.token}"}, ssl=api.ssl()
            ) as resp:
                assert resp.status != 401, route
    assert tried == len(routes) * len(_bad_authorizations(api.token))


async def test_only_the_listed_routes_answer_without_a_token(hub: Hub, api: HubApi) -> None:
    open_routes = set()
    async with aiohttp.ClientSession() as session:
        for route in app_routes(build_app(hub)):
            async with session.request(route.method, api.url + route.path, ssl=api.ssl(), json={}) as resp:
                if resp.status != 401:
                    open_routes.add(route.template)
    # Artifacts answer 403 (not 401) without a credential: they want a device certificate.
    assert open_routes == PUBLIC | DEVICE_OR_OPERATOR


async def test_unknown_paths_and_methods_leak_nothing(api: HubApi) -> None:
    for method, path in (("GET", "/api/v1/nope"), ("DELETE", "/api/v1/claims"), ("GET", "/api/v2/devices")):
        status, body = await api.request(method, path, token="")
        assert status in (401, 404, 405), (method, path, status)
        assert set(json.loads(body)) == {"error"}


async def test_claim_tokens_are_not_operator_tokens(api: HubApi) -> None:
    status, created = await api.call("POST", "/api/v1/claims", {"uses": 1})
    assert status == 201
    status, body = await api.call("GET", "/api/v1/devices", token=created["token"])
    assert status == 401 and set(body) == {"error"}
    # Listing claims never shows a token.
    status, raw = await api.request("GET", "/api/v1/claims")
    assert status == 200 and created["token"].encode() not in raw


def _doc_regex(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)))


async def test_openapi_document_names_every_route_and_nothing_else(hub: Hub, api: HubApi) -> None:
    status, served = await api.call("GET", "/api/v1/openapi.json")
    assert status == 200 and served == json.loads(json.dumps(openapi_document()))
    documented = [(m.upper(), _doc_regex(p)) for p, ops in served["paths"].items() for m in ops]
    routes = [r for r in app_routes(build_app(hub)) if r.method != "HEAD"]
    for route in routes:
        assert any(m == route.method and rx.fullmatch(route.path) for m, rx in documented), f"undocumented {route}"
    for method, rx in documented:
        assert any(method == r.method and rx.fullmatch(r.path) for r in routes), f"no route for {method} {rx}"
