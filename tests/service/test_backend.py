"""The estimators on the service backend: the same estimator, its kernels computed as jobs
by the real server (uvicorn, SQLite, Dask worker processes), predicts what it predicts
in-process and on Dask."""

import numpy as np

from ntkcompute.architectures import fc
from ntkcompute.client import Client, ServiceBackend
from ntkcompute.datasets import digits
from ntkcompute.estimators import NTKClassifier
from tests.conftest import fc_family


def test_classifier_through_the_service_equals_in_process(service):
    x, y = digits()
    x = x.reshape(len(x), -1)[:240] / 16.0
    y = y[:240]
    est = dict(arch=fc(2), lam_grid=[1e-4, 1e-2, 1.0])
    local = NTKClassifier(**est).fit(x[:160], y[:160])
    with Client(service.url, service.key_a) as c:
        before = c._json("GET", "/v1/datasets")
        assert isinstance(before, list)
        remote = NTKClassifier(**est, backend=ServiceBackend(c, timeout=120))
        remote.fit(x[:160], y[:160])
        assert remote.lam_ == local.lam_
        assert np.array_equal(remote.predict(x[160:]), local.predict(x[160:]))
        np.testing.assert_allclose(remote.decision_function(x[160:]),
                                   local.decision_function(x[160:]), rtol=0, atol=1e-10)
        # 4 kernel jobs, 7 uploads, each deleted once its kernel was fetched
        assert [d["id"] for d in c._json("GET", "/v1/datasets")] == [d["id"] for d in before]


def test_a_family_estimator_with_variants_and_biases_through_the_service_is_one_job(service):
    x, y = digits()
    x = x.reshape(len(x), -1)[:150] / 16.0
    y = y[:150]
    spec = fc_family()
    est = dict(arch=spec, depths=[1, 3], lam_grid=[1e-3, 1e-1], variants=[0, 1],
               b_stds=[0.0, 0.5])
    local = NTKClassifier(**est).fit(x[:100], y[:100])
    with Client(service.url, service.key_a) as c:
        jobs = len(c._json("GET", "/v1/kernels"))
        remote = NTKClassifier(**est, backend=ServiceBackend(c, timeout=120))
        remote.fit(x[:100], y[:100])
        made = c._json("GET", "/v1/kernels")[jobs:]
        # one family job for the fit, every (depth, variant) from it
        assert [(j["depths"], j["variants"], j["b_stds"]) for j in made] == [
            ([1, 3], [0, 1], [0.0, 0.5])]
        assert (remote.b_std_, remote.depth_, remote.variant_, remote.lam_) == \
            (local.b_std_, local.depth_, local.variant_, local.lam_)
        np.testing.assert_allclose(remote.cv_results_["score"], local.cv_results_["score"],
                                   rtol=1e-10)
        np.testing.assert_allclose(remote.decision_function(x[100:]),
                                   local.decision_function(x[100:]), rtol=0, atol=1e-10)
