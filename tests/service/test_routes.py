"""The routes' structure, in process and without a cluster (the app's lifespan is not run):
each router imports alone, every ``/v1`` operation asks for a key, and the list/get pairs
made by ``routes.common.add_list_get`` look like hand-written ones in the OpenAPI document."""

from __future__ import annotations

import importlib
import re
import warnings

import pytest
from fastapi import APIRouter

from service.config import Settings

MODULES = ("health", "datasets", "kernels", "solves")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from service.app import create_app

    root = tmp_path_factory.mktemp("routes")
    return create_app(Settings(store=str(root / "store"), db=f"sqlite:///{root / 'ntk.db'}"))


@pytest.mark.parametrize("name", MODULES)
def test_each_router_imports_alone(name):
    module = importlib.import_module(f"service.routes.{name}")
    assert isinstance(module.router, APIRouter)
    assert module.router.routes


def test_v1_operations_need_a_key_and_health_does_not(app):
    for path, item in app.openapi()["paths"].items():
        for method, op in item.items():
            needs = op.get("security") == [{"HTTPBearer": []}]
            assert needs == path.startswith("/v1/"), (method, path)


def test_every_v1_route_answers_401_without_a_key(app):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    client = TestClient(app)  # not entered: no lifespan, no cluster
    for path, item in app.openapi()["paths"].items():
        if not path.startswith("/v1/"):
            continue
        url = re.sub(r"\{[^}]+\}", "x-1", path)
        for method in item:
            r = client.request(method.upper(), url)
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert r.json() == {"detail": "Authorization: missing bearer API key",
                                "field": "Authorization"}


@pytest.mark.parametrize(("plural", "one"), [("datasets", "dataset"), ("kernels", "kernel"),
                                             ("solves", "solve")])
def test_list_and_get_are_named_as_written_by_hand(app, plural, one):
    paths = app.openapi()["paths"]
    listing, getting = paths[f"/v1/{plural}"]["get"], paths[f"/v1/{plural}/{{{one}_id}}"]["get"]
    assert listing["operationId"] == f"list_{plural}_v1_{plural}_get"
    assert getting["operationId"] == f"get_{one}_v1_{plural}__{one}_id__get"
    assert [p["name"] for p in getting["parameters"]] == [f"{one}_id"]
    assert listing["tags"] == getting["tags"] == [plural]
