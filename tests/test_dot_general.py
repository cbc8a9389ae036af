"""DotGeneral (``lax.dot_general`` with a constant): neural-tangents 0.6.5's kernels (a fixture
it computed: tests/fixtures/make_nt_dot_general.py), closed forms, the finite net against
``lax.dot_general``'s semantics written out, the empirical NTK of wide nets, random features,
and the refusals."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import InputError, stax
from ntkcompute.empirical import forward
from ntkcompute.layers import rule_of
from ntkcompute.layers.dot import MAX_CONSTANT
from ntkcompute.plan import make_plan
from ntkcompute.spec import parse_arch

FIXTURE = np.load(Path(__file__).parent / "fixtures" / "nt_dot_general.npz")
N_CASES = sum(1 for k in FIXTURE.files if k.startswith("arch_"))


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def dg(dn=None, **kw):
    layer = {"type": "dot_general", **kw}
    if dn is not None:
        layer["dimension_numbers"] = dn
    return layer


def contract(*pairs):
    """dimension_numbers contracting ``(lhs axis, rhs axis)`` pairs, no batch axes."""
    return [[[a for a, _ in pairs], [b for _, b in pairs]], [[], []]]


@pytest.mark.parametrize("i", range(N_CASES), ids=[str(FIXTURE[f"name_{i}"])
                                                    for i in range(N_CASES)])
def test_equals_neural_tangents(i):
    arch = json.loads(str(FIXTURE[f"arch_{i}"]))
    data = str(FIXTURE[f"data_{i}"])
    x1, x2 = FIXTURE[f"{data}1"], FIXTURE[f"{data}2"]
    k, ks = nc.kernel(arch, x1, x2), nc.kernel(arch, x1)
    off = ~np.eye(len(x1), dtype=bool)
    for g in ("nngp", "ntk"):
        assert _rel(k[g], FIXTURE[f"{g}_{i}"]) < 1e-12, (g, _rel(k[g], FIXTURE[f"{g}_{i}"]))
        sym = FIXTURE[f"sym_{g}_{i}"]
        assert _rel(ks[g][off], sym[off]) < 1e-12
        assert _rel(np.diag(ks[g]), np.diag(sym)) < 1e-7  # nt's ReLU angle on the diagonal


def test_kernel_is_t_k_tt(rng):
    # no nonlinearity: the input covariance per position pair, contracted by T on both sides
    x = rng.standard_normal((3, 4, 5, 3, 2))
    t = rng.standard_normal((3, 4))  # rhs axes 0, 1 <- input axes 3, 1
    k0 = np.einsum("ahwvc,bgxuc->abhgwxvu", x, x) / 2
    want = np.einsum("vh,ug,abhgwxvu->abwx", t, t, k0).mean(axis=(2, 3))
    arch = {"layers": [dg(contract((3, 0), (1, 1)), rhs=t.tolist()),
                       {"type": "global_avg_pool"}, {"type": "dense"}]}
    got = nc.kernel(arch, x)
    assert _rel(got["nngp"], want) < 1e-13 and _rel(got["ntk"], want) < 1e-13
    # lhs with the same map: dot_general(T, x) contracting T's axes (0, 1) with x's (3, 1)
    lhs = nc.kernel({"layers": [dg(contract((0, 3), (1, 1)), lhs=t.tolist()),
                                *arch["layers"][1:]]}, x)
    assert _rel(lhs["nngp"], want) < 1e-13


def test_identity_and_scalars(rng):
    x = rng.standard_normal((3, 5, 4, 2))
    tail = [{"type": "conv", "filter_shape": [2, 2], "W_std": 1.3, "b_std": 0.1},
            {"type": "relu"}, {"type": "flatten"}, {"type": "dense"}]
    head = [{"type": "conv", "filter_shape": [2, 1], "W_std": 1.2, "b_std": 0.2}]
    base = nc.kernel({"layers": [*head, {"type": "identity"}, *tail]}, x)
    same = nc.kernel({"layers": [*head, dg(), *tail]}, x)
    assert _rel(same["ntk"], base["ntk"]) < 1e-15
    # a scale c before a ReLU net's last conv: scales that conv's input kernels by c²,
    # which a conv without bias turns into W_std → c W_std
    nob = [{**tail[0], "b_std": None}, *tail[1:]]
    scaled = nc.kernel({"layers": [*head, dg(rhs=-1.7), *nob]}, x)
    wide = nc.kernel({"layers": [*head, {**nob[0], "W_std": 1.3 * 1.7}, *nob[1:]]}, x)
    assert _rel(scaled["nngp"], wide["nngp"]) < 1e-14
    # the plan: a scalar keeps the diagonal layout, a contraction needs the full one
    plan = make_plan(parse_arch({"layers": [*head, dg(lhs=2.0), *tail]}), x.shape)
    assert not plan.layers[1].in_full
    plan = make_plan(parse_arch({"layers": [*head, dg(contract((2, 0)), rhs=[1.0] * 4),
                                            {"type": "flatten"}, {"type": "dense"}]}),
                     x.shape)
    assert plan.layers[1].in_full and not plan.layers[1].out_full


def _lax_dot_general(x, t, dn, side):
    """``lax.dot_general`` written out with einsum (no batch axes): batch, free axes of the
    left factor, then of the right one."""
    (lc, rc), _ = dn
    a, b = (x, t) if side == "rhs" else (t, x)
    la = list(range(a.ndim))
    lb = list(range(a.ndim, a.ndim + b.ndim))
    for i, j in zip(lc, rc, strict=True):
        lb[j] = la[i]
    out = [s for s in la if s not in lb] + [s for s in lb if s not in la]
    return np.einsum(a, la, b, lb, out)


@pytest.mark.parametrize(("shape", "tshape", "pairs", "side"), [
    ((3, 2, 6, 4), (2,), [(1, 0)], "rhs"),
    ((3, 2, 6, 4), (2,), [(0, 1)], "lhs"),
    ((3, 4, 5, 2), (5, 4), [(0, 2), (1, 1)], "lhs"),
    ((3, 4, 5, 2), (5, 4), [(2, 0), (1, 1)], "rhs"),
    ((3, 2, 3, 4, 2), (4, 2), [(3, 0), (1, 1)], "rhs"),
    ((3, 7, 2), (7,), [(1, 0)], "rhs"),
])
def test_finite_forward_is_lax_dot_general_and_backward_its_transpose(
        rng, shape, tshape, pairs, side):
    x = rng.standard_normal(shape)
    t = rng.standard_normal(tshape)
    dn = contract(*pairs)
    want = _lax_dot_general(x, t, dn, side)
    arch = parse_arch({"layers": [dg(dn, **{side: t.tolist()}), {"type": "flatten"}]})
    plan = make_plan(arch, x.shape)
    got, _ = forward(plan, [], x)
    assert got.shape == (shape[0], want[0].size)
    assert np.allclose(got, want.reshape(shape[0], -1), atol=1e-13)
    lp = plan.layers[0]
    a = x.reshape(shape[0], -1, shape[-1])
    out, data = rule_of(lp.layer).forward(lp, None, a)
    d = rng.standard_normal((2, *out.shape))  # two cotangents: <d, f(a)> = <f*(d), a>
    back = rule_of(lp.layer).backward(lp, data, d, None)
    assert back.shape == (2, *a.shape)
    for k in range(2):
        assert np.isclose((d[k] * out).sum(), (back[k] * a).sum(), rtol=1e-12)


@pytest.mark.parametrize(("layer", "readout"), [
    (dg(contract((1, 0)), rhs=[0.8, -1.3, 0.5]), [{"type": "global_avg_pool"}]),
    (dg(contract((0, 2), (1, 1)), lhs=[[0.5, -1.0, 0.3], [1.2, 0.1, -0.7]]), []),
    (dg(rhs=1.6), [{"type": "flatten"}]),
])
def test_infinite_width_is_the_limit_of_the_empirical_ntk(rng, layer, readout):
    x = rng.standard_normal((3, 3, 2, 2))
    arch = {"layers": [{"type": "conv", "filter_shape": [2, 2], "padding": "SAME",
                        "W_std": 1.3, "b_std": 0.1}, {"type": "relu"},
                       {"type": "conv", "filter_shape": [2, 2], "padding": "SAME",
                        "W_std": 1.2}, layer, {"type": "relu"}, *readout,
                       {"type": "dense", "W_std": 1.1}]}
    k = nc.kernel(arch, x)["ntk"]
    errs = [np.mean([np.abs(nc.empirical_kernel(arch, x, width=w, seed=s)["ntk"] - k).mean()
                     / np.abs(k).mean() for s in range(6)]) for w in (32, 1024)]
    # ~ width^-1/2: 32x = 5.7x (the vector case is the noisiest: 0.36 -> 0.067, 0.031 at 4096)
    assert errs[1] < errs[0] / 2.5 and errs[1] < 0.1, errs


def test_random_features_are_exact_for_a_linear_net(rng):
    x = rng.standard_normal((3, 4, 3, 2))
    arch = {"layers": [dg(contract((2, 0)), rhs=[0.5, -1.2, 0.9]), {"type": "identity"},
                       dg(lhs=1.3), {"type": "global_avg_pool"},
                       {"type": "dense", "W_std": 1.3}]}
    f = nc.features(arch, x, 64, exact_norms=False)
    k = nc.kernel(arch, x)
    for g in ("nngp", "ntk"):
        assert _rel(f[g] @ f[g].T, k[g]) < 1e-13


def test_stax_signature_and_spec():
    params = list(inspect.signature(stax.DotGeneral).parameters.values())
    assert [(p.name, p.default) for p in params] == [
        ("lhs", None), ("rhs", None), ("dimension_numbers", (((), ()), ((), ()))),
        ("precision", None), ("batch_axis", 0), ("channel_axis", -1)]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert stax.DotGeneral(rhs=np.array([1, -1]), dimension_numbers=(((1,), (0,)), ((), ()))
                           ).layers[0] == {"type": "dot_general", "rhs": [1.0, -1.0],
                                           "dimension_numbers": [[[1], [0]], [[], []]]}
    assert stax.DotGeneral(lhs=np.float32(2)).layers[0]["lhs"] == 2.0
    # nt's docstring examples (x: two time series stacked along H), through stax
    x = np.random.default_rng(1).standard_normal((5, 2, 12, 3))
    for mid in (stax.DotGeneral(rhs=2.),
                stax.DotGeneral(rhs=np.array([1., -1.]),
                                dimension_numbers=(((1,), (0,)), ((), ())))):
        net = stax.serial(stax.Conv(8, (1, 3)), stax.Relu(), mid, stax.GlobalAvgPool())
        shape, params = net[0](0, x.shape)
        assert shape == (5, 8) and net[1](params, x).shape == (5, 8)
        assert net[2](x, None, "ntk").shape == (5, 5)
    # JSON round trip of the spec
    spec = parse_arch({"layers": [dg(contract((1, 0), (2, 1)), rhs=[[1, 2], [3, 4]]),
                                  {"type": "dense"}]})
    assert parse_arch(spec.to_json()) == spec


def test_specs_compare_hash_and_pickle_after_use(rng):
    import pickle

    spec = {"layers": [dg(contract((1, 0), (2, 1)), rhs=[[1, 2], [3, 4]]), {"type": "dense"}]}
    a, b = parse_arch(spec), parse_arch(spec)
    nc.kernel(a, rng.standard_normal((2, 2, 2, 1)))  # caches the layer's map
    assert a == b and hash(a.layers[0]) == hash(b.layers[0])
    assert pickle.loads(pickle.dumps(a)) == a and parse_arch(a.to_json()) == a
    assert json.loads(a.to_json())["layers"][0]["rhs"] == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(("layer", "x_shape", "field"), [
    # contracting the channel axis (input axis 3 of (n, H, W, C))
    (dg(contract((3, 0)), rhs=[1.0, 2.0]), (2, 4, 3, 2), "dimension_numbers"),
    (dg(contract((0, 3)), lhs=[1.0, 2.0, 3.0]), (2, 4, 3, 3), "dimension_numbers"),
    # an axis the input does not have
    (dg(contract((5, 0)), rhs=[1.0, 2.0]), (2, 4, 3, 2), "dimension_numbers"),
    # contracted sizes that do not match
    (dg(contract((1, 0)), rhs=[1.0, 2.0, 3.0]), (2, 4, 3, 2), "rhs"),
    (dg(contract((0, 2), (1, 1)), lhs=[[1.0, 2.0, 3.0]] * 4), (2, 4, 3, 2), "lhs"),
])
def test_misfits_are_refused_in_the_plan_naming_the_field(layer, x_shape, field):
    spec = {"layers": [layer, {"type": "flatten"}, {"type": "dense"}]}
    parse_arch(spec)  # the fields alone are fine
    with pytest.raises(InputError) as e:
        nc.kernel(spec, np.ones(x_shape))
    assert (e.value.field, e.value.layer) == (field, 0), e.value
    with pytest.raises(InputError) as e:
        nc.empirical_kernel(spec, np.ones(x_shape), width=4)
    assert e.value.field == field


@pytest.mark.parametrize(("layer", "field"), [
    (dg(lhs=1.0, rhs=2.0), "rhs"),  # both constants
    (dg(contract((1, 0)), lhs=[1.0], rhs=[2.0]), "rhs"),
    (dg(contract((0, 1)), rhs=[1.0, 2.0]), "dimension_numbers"),  # the batch axis
    (dg(contract((1, 0)), lhs=[1.0, 2.0]), "dimension_numbers"),  # lhs' batch axis too
    # batch dimensions: output starts with them, not the batch axis
    (dg([[[], []], [[0], [0]]], rhs=[1.0, 2.0]), "dimension_numbers"),
    (dg([[[1], [0]], [[2], [1]]], rhs=[[1.0, 2.0]] * 2), "dimension_numbers"),
    # a free axis of the constant: after the channels (rhs) or before the batch (lhs)
    (dg(contract((1, 1)), rhs=[[1.0, 2.0]] * 2), "dimension_numbers"),
    (dg(contract((1, 1)), lhs=[[1.0, 2.0]] * 2), "dimension_numbers"),
    (dg(contract((1, 3)), rhs=[1.0, 2.0]), "dimension_numbers"),  # rhs has no axis 3
    (dg(contract((1, 0)), rhs=2.0), "dimension_numbers"),  # a scalar has no axes
    (dg(contract((1, 0))), "dimension_numbers"),  # the identity contracts nothing
    (dg(contract((-2, 0)), rhs=[1.0, 2.0]), "dimension_numbers"),  # lax: no negative axes
    (dg(contract((1, 0), (1, 1)), rhs=[[1.0]]), "dimension_numbers"),  # an axis twice
    (dg([[[1], [0, 1]], [[], []]], rhs=[[1.0]]), "dimension_numbers"),
    (dg([[1], [0]], rhs=[1.0]), "dimension_numbers"),
    (dg("x", rhs=[1.0]), "dimension_numbers"),
    # the constant itself
    (dg(rhs=[[0.0] * 256] * 257), "rhs"),  # more than 2**16 entries
    (dg(lhs=[[[0.0] * 64] * 64] * 64), "lhs"),
    (dg(rhs=[[1.0, 2.0], [3.0]]), "rhs"),  # ragged
    (dg(rhs=[1.0, [2.0]]), "rhs"),
    (dg(rhs=[]), "rhs"),
    (dg(rhs=[1.0, "a"]), "rhs"),
    (dg(rhs=True), "rhs"),
    (dg(rhs=1e300), "rhs"),
    (dg(rhs=[10**400]), "rhs"),  # a JSON integer too big for a float
    (dg(rhs=float("nan")), "rhs"),
    ({**dg(rhs=1.0), "side": "rhs"}, "side"),  # unknown fields
])
def test_bad_fields_are_refused_naming_them(layer, field):
    with pytest.raises(InputError) as e:
        parse_arch({"layers": [layer, {"type": "flatten"}, {"type": "dense"}]})
    assert (e.value.field, e.value.layer) == (field, 0), e.value


def test_oversized_constants_are_refused_before_they_are_read():
    # a 2**20-entry constant fails at its second level, before the leaves are looked at
    row = [0.0] * 1024
    with pytest.raises(InputError, match=f"more than {MAX_CONSTANT} entries") as e:
        parse_arch({"layers": [dg(rhs=[row] * 1024), {"type": "dense"}]})
    assert e.value.field == "rhs"
    with pytest.raises(InputError) as e:
        stax.DotGeneral(rhs=np.zeros((300, 300)))
    assert e.value.field == "rhs"


@pytest.mark.parametrize(("make", "field"), [
    (lambda: stax.DotGeneral(lhs=1.0, rhs=2.0), "rhs"),
    (lambda: stax.DotGeneral(rhs=np.ones(2), dimension_numbers=(((0,), (0,)), ((), ()))),
     "dimension_numbers"),
    (lambda: stax.DotGeneral(rhs=np.ones((2, 2)), dimension_numbers=(((1,), (0,)), ((), ()))),
     "dimension_numbers"),
    (lambda: stax.DotGeneral(rhs=np.ones(2), dimension_numbers=(((1,), (0,)), ((0,), (0,)))),
     "dimension_numbers"),
    (lambda: stax.DotGeneral(rhs=np.ones(2), dimension_numbers="bad"), "dimension_numbers"),
    (lambda: stax.DotGeneral(rhs=np.array(["a"])), "rhs"),
    (lambda: stax.DotGeneral(lhs=np.array([np.inf])), "lhs"),
    (lambda: stax.DotGeneral(rhs=2.0, batch_axis=1), "batch_axis"),
    (lambda: stax.DotGeneral(rhs=2.0, channel_axis=1), "channel_axis"),
])
def test_stax_refusals_name_the_argument(make, field):
    with pytest.raises(InputError) as e:
        make()
    assert e.value.field == field
