"""The REST routes, one ``APIRouter`` a module: ``health`` (``/healthz``, ``/readyz``,
``/v1/limits``), ``datasets``, ``kernels``, ``solves``, and ``dashboard`` (the Dask dashboard,
proxied); ``common`` holds what they share.
:data:`api_router` is all of them, in the order the OpenAPI document lists them."""

from fastapi import APIRouter

from . import dashboard, datasets, health, kernels, solves

__all__ = ["api_router", "dashboard", "datasets", "health", "kernels", "solves"]

api_router = APIRouter()
for _module in (health, datasets, kernels, solves, dashboard):
    api_router.include_router(_module.router)
