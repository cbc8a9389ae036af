"""The routes' structure, in process and without a cluster (the app's lifespan is not run):
each router imports alone, every ``/v1`` operation asks for a key, and the list/get pairs
made by ``routes.common.add_list_get`` look like hand-written ones in the OpenAPI document,
and the document itself: stable operationIds, problem+json errors, valid examples."""

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
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json() == {"type": "about:blank", "title": "Unauthorized", "status": 401,
                                "detail": "Authorization: missing bearer API key",
                                "field": "Authorization", "instance": url}


@pytest.mark.parametrize(("plural", "one"), [("datasets", "dataset"), ("kernels", "kernel"),
                                             ("solves", "solve")])
def test_list_and_get_are_named_as_written_by_hand(app, plural, one):
    paths = app.openapi()["paths"]
    listing, getting = paths[f"/v1/{plural}"]["get"], paths[f"/v1/{plural}/{{{one}_id}}"]["get"]
    assert listing["operationId"] == f"list_{plural}"
    assert getting["operationId"] == f"get_{one}"
    assert [p["name"] for p in getting["parameters"]] == [f"{one}_id"]
    assert listing["tags"] == getting["tags"] == [plural]


def test_operation_ids_are_stable_names_and_unique(app):
    ids = [op["operationId"] for item in app.openapi()["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z_]+", i) and not i.endswith(("_get", "_post")) for i in ids)


def test_errors_are_problem_json_and_no_route_documents_fastapis_422(app):
    doc = app.openapi()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for code, answer in op["responses"].items():
                if int(code) >= 400 and path != "/readyz":
                    assert list(answer["content"]) == ["application/problem+json"], (path, code)
                    example = answer["content"]["application/problem+json"]["example"]
                    assert example["status"] == int(code)
            if method == "get" and not path.startswith("/v1/"):
                continue
            assert "401" in op["responses"], (method, path)
    # a GET never reads a body, so it documents neither 408 nor 413
    assert not [(p, c) for p, item in doc["paths"].items() for m, op in item.items()
                for c in op["responses"] if m == "get" and c in ("408", "413")]


def test_every_schema_example_is_valid_for_its_model(app):
    import service.schemas as schemas

    checked = 0
    for name, schema in app.openapi()["components"]["schemas"].items():
        for example in schema.get("examples", []):
            getattr(schemas, name).model_validate(example)
            checked += 1
    for name in ("KernelRequest", "SolveRequest", "KernelOut", "SolveOut", "DatasetOut"):
        assert app.openapi()["components"]["schemas"][name]["examples"], name
    assert checked >= 8


def test_docs_pages_load_their_assets_from_the_service(app):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    client = TestClient(app)
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)
        assert assets, page
        assert not [a for a in assets if "://" in a], assets  # no CDN
        for a in assets:
            r = client.get(a)
            assert r.status_code == 200 and len(r.content) > 1000, a
