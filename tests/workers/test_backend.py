"""The estimators on the Dask backend: the same fit and predictions as in-process, each
kernel a real tiled job on the cluster's worker processes."""

import numpy as np
import pytest

from ntkcompute.architectures import fc
from ntkcompute.datasets import digits
from ntkcompute.estimators import NTKClassifier
from tests.conftest import fc_family
from workers import DaskBackend


def test_classifier_on_dask_equals_in_process(tmp_path, client):
    x, y = digits()
    x = x.reshape(len(x), -1)[:240] / 16.0
    y = y[:240]
    calls = []

    class Counting(DaskBackend):
        def gram(self, arch, x1, x2=None, get="ntk"):
            calls.append((len(x1), None if x2 is None else len(x2)))
            return super().gram(arch, x1, x2, get)

    est = dict(arch=fc(2), lam_grid=[1e-4, 1e-2, 1.0])
    local = NTKClassifier(**est).fit(x[:160], y[:160])
    dask = NTKClassifier(**est, backend=Counting(client, store=str(tmp_path), tile=64))
    dask.fit(x[:160], y[:160])
    assert calls == [(160, None)]  # one symmetric Gram job for the fit
    assert dask.lam_ == local.lam_
    assert np.array_equal(dask.predict(x[160:]), local.predict(x[160:]))
    assert calls[-1] == (80, 160)  # the cross kernel: test rows x training rows
    np.testing.assert_allclose(dask.decision_function(x[160:]),
                               local.decision_function(x[160:]), rtol=0, atol=1e-10)
    assert dask.score(x[160:], y[160:]) > 0.8
    assert calls[1:] == [(80, 160)] * 3  # predict, decision_function, score: one job each
    assert len(list(tmp_path.iterdir())) == 4  # each kernel kept as its own job


@pytest.mark.parametrize("variants", [None, [0, 2]])
def test_a_family_estimator_on_dask_is_one_family_job(tmp_path, client, variants):
    x, y = digits()
    x = x.reshape(len(x), -1)[:150] / 16.0
    y = y[:150]
    spec = fc_family()
    calls = []

    class Counting(DaskBackend):
        def family(self, arch, x, depths, get="ntk", **kw):
            calls.append(("family", len(x), tuple(depths), kw.get("variants")))
            return super().family(arch, x, depths, get, **kw)

        def gram(self, arch, x1, x2=None, get="ntk"):
            calls.append(("gram", len(x1), None if x2 is None else len(x2)))
            return super().gram(arch, x1, x2, get)

    est = dict(arch=spec, depths=[1, 2, 4], lam_grid=[1e-3, 1e-1], variants=variants)
    local = NTKClassifier(**est).fit(x[:100], y[:100])
    dask = NTKClassifier(**est, backend=Counting(client, store=str(tmp_path), tile=40))
    dask.fit(x[:100], y[:100])
    assert calls == [("family", 100, (1, 2, 4), variants)]  # every member from one job
    assert (dask.depth_, dask.variant_, dask.lam_) == (local.depth_, local.variant_,
                                                       local.lam_)
    np.testing.assert_allclose(dask.cv_results_["score"], local.cv_results_["score"],
                               rtol=1e-10)
    np.testing.assert_allclose(dask.decision_function(x[100:]),
                               local.decision_function(x[100:]), rtol=0, atol=1e-10)
    assert calls[1:] == [("gram", 50, 100)]  # the chosen member's cross kernel only
