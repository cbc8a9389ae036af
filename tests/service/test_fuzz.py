"""Fuzzing the live API: schemathesis over the OpenAPI schema (with real ids), and hypothesis
over architecture and solve bodies against a real dataset and kernel. Zero 5xx allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import httpx
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ntkcompute.client import Client
from ntkcompute.spec import LAYER_CLASSES

from .conftest import make_key

TAGS = [c.model_fields["type"].default for c in LAYER_CLASSES]
SMALL_INT = st.integers(-2, 12)
VALUES = st.one_of(
    SMALL_INT, st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([0.0, 1e308, -1.0, 2.0]), st.lists(SMALL_INT, max_size=4),
    st.sampled_from(["SAME", "VALID", "CIRCULAR", "bogus", "tanh", "erf"]), st.none())
FIELDS = ["W_std", "b_std", "out_dim", "filter_shape", "strides", "padding", "out_chan",
          "window_shape", "alpha", "a", "b", "c", "fn", "deg", "num", "axis", "eps", "n",
          "n_heads", "linear_scaling", "attention_mechanism", "gamma", "W_query_std"]
FLAT = st.one_of(  # bare layers (mostly valid stacks) and layers with random fields
    st.sampled_from(TAGS).map(lambda t: {"type": t}),
    st.builds(lambda t, kv: {"type": t, **kv}, st.sampled_from(TAGS),
              st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=3)))
LAYER = st.recursive(FLAT, lambda inner: st.one_of(  # composites, well and badly formed
    st.builds(lambda bs: {"type": "parallel", "branches": bs},
              st.lists(st.lists(inner, max_size=3), max_size=3)),
    st.builds(lambda ls: {"type": "serial", "layers": ls}, st.lists(inner, max_size=3)),
    st.builds(lambda x, n: {"type": "repeat", "layer": x, "n": n}, inner, SMALL_INT),
    st.builds(lambda x, k: {"type": "serial", "layers": [  # a residual block, if k == 2
        {"type": "fan_out", "num": k},
        {"type": "parallel", "branches": [[{"type": "identity"}], [x]]},
        {"type": "fan_in_sum"}]}, inner, st.integers(1, 3))), max_leaves=6)
ARCH = st.fixed_dictionaries({"layers": st.lists(LAYER, min_size=0, max_size=6)},
                             optional={"parameterization": st.sampled_from(
                                 ["ntk", "standard", "other"])})


def _ids(service, key):
    with Client(service.url, key) as c:
        rng = np.random.default_rng(0)
        img = c.upload(rng.standard_normal((24, 4, 4, 2)), np.arange(24) % 3)
        flat = c.upload(rng.standard_normal((24, 6)), rng.standard_normal(24))
        job = c.kernel(flat, {"layers": [{"type": "dense"}, {"type": "relu"},
                                         {"type": "dense"}]}, test=flat).wait(progress=False)
        sol = c.solve(job, 0.1).wait()
    return img.id, flat.id, job.id, sol.id


def test_schemathesis_finds_no_server_error(service, tmp_path):
    key = make_key(service.db, "fuzz")
    ds, _, kid, sid = _ids(service, key)
    cfg = tmp_path / "schemathesis.toml"
    # The coverage phase enumerates boundary values of every field of every variant; with the
    # recursive layer union (branches of layers of branches...) that is ~45,000 kernel
    # requests and 3 minutes. Kernel requests get the fuzzing and stateful phases here, and
    # the architecture fuzzer below, which builds nested composites on purpose.
    cfg.write_text(f'[parameters]\ndataset_id = "{ds}"\nkernel_id = "{kid}"\n'
                   f'solve_id = "{sid}"\n\n[[operations]]\ninclude-path = "/v1/kernels"\n'
                   'include-method = "POST"\nphases.coverage.enabled = false\n')
    har = tmp_path / "har.json"
    st_bin = os.path.join(os.path.dirname(sys.executable), "st")
    out = subprocess.run(
        [st_bin, "--config-file", str(cfg), "run", f"{service.url}/openapi.json",
         "-H", f"Authorization: Bearer {key}", "--checks", "not_a_server_error",
         "--max-examples", "25", "--seed", "1", "--report", "har",
         "--report-har-path", str(har)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:]
    entries = json.loads(har.read_text())["log"]["entries"]
    status = Counter(e["response"]["status"] for e in entries)
    assert len(entries) > 500
    assert not [s for s in status if s >= 500], status
    assert status[200] > 0 and status[422] > 0  # it reached real handlers, valid and not


def test_fuzzed_architectures_and_solves_are_never_5xx(service):
    key = make_key(service.db, "fuzz2")
    img, flat, kid, _ = _ids(service, key)
    h = {"Authorization": f"Bearer {key}"}
    status: Counter = Counter()

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate], database=None)
    @given(data=st.data())
    def one(data):
        body = {"train": data.draw(st.sampled_from([img, flat])), "arch": data.draw(ARCH),
                "kernels": data.draw(st.sampled_from([["ntk"], ["nngp"], ["ntk", "nngp"]])),
                "dtype": data.draw(st.sampled_from([None, "float32", "float64"]))}
        r = httpx.post(f"{service.url}/v1/kernels", json=body, headers=h, timeout=60)
        assert r.status_code in (202, 422, 429), r.text
        status[r.status_code] += 1
        assert "id" in r.json() if r.status_code == 202 else r.json()["detail"]
        if r.status_code == 202:
            httpx.delete(f"{service.url}/v1/kernels/{r.json()['id']}", headers=h)
        solve = {"kernel": kid, **data.draw(st.fixed_dictionaries({}, optional={
            "lambdas": st.lists(st.floats(-1, 1e6), min_size=0, max_size=3),
            "solver": st.sampled_from(["cg", "direct", "lu"]),
            "rank": st.integers(-1, 50), "maxiter": st.integers(0, 30),
            "labels": st.lists(st.integers(-1, 5), min_size=23, max_size=25),
            "analyses": st.fixed_dictionaries({}, optional={
                "spectrum": st.integers(-1, 30), "bound": st.booleans(),
                "times": st.lists(st.floats(0, 100), max_size=2)})}))}
        r = httpx.post(f"{service.url}/v1/solves", json=solve, headers=h, timeout=60)
        assert r.status_code in (202, 422, 429), r.text
        status[("solve", r.status_code)] += 1

    one()
    # not all rejections: some jobs and solves were accepted
    assert status[202] > 0 and status[422] > 0 and status[("solve", 202)] > 0, status
