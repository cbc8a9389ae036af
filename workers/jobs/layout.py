"""Where a service's jobs live in the store: the one place that knows the layout.

::

    <store>/datasets/<dataset id>/          x (n, ...), y        (workers.store.write_dataset)
    <store>/kernels/<job id>/train/         train x train        (a Gram or features job)
    <store>/kernels/<job id>/test/          test x train, or the test rows' features
    <store>/kernels/<job id>/solves/<id>/   coefficients (L, n, c), predictions (L, m, c)
    <store>/_readyz/                        the readiness probe's scratch group

A URL is a local path or an fsspec URL (``s3://bucket/prefix``); parts join with ``/``.
"""

from __future__ import annotations

#: A kernel job's parts, in the order they are computed: train x train, then test x train.
PARTS = ("train", "test")


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a path or a URL (a trailing ``/`` on ``base`` is dropped)."""
    return "/".join([base.rstrip("/"), *parts])


def dataset_url(store: str, dataset_id: str) -> str:
    return join(store, "datasets", dataset_id)


def kernel_url(store: str, job_id: str) -> str:
    return join(store, "kernels", job_id)


def part_url(job_url: str, part: str) -> str:
    """``train`` (train x train) or ``test`` (test x train) of a kernel job."""
    if part not in PARTS:
        raise ValueError(f"a kernel job's part is one of {PARTS}, got {part!r}")
    return join(job_url, part)


def parts_of(job_url: str, has_test: bool) -> dict[str, str]:
    """Every part of a job that has (or has not) a test set: name -> URL."""
    return {p: part_url(job_url, p) for p in (PARTS if has_test else PARTS[:1])}


def solve_url(job_url: str, solve_id: str) -> str:
    return join(job_url, "solves", solve_id)


def probe_url(store: str) -> str:
    """A scratch group the readiness check writes and reads back."""
    return join(store, "_readyz")
