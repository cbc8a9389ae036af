"""User activations: ``elementwise`` with a safe expression (``expr``, symbolic derivative),
in-process callables (traced to an expression, or kept as Python with ``py``) and
``stax.Elementwise``'s closed-form ``nngp_fn``; against closed forms, the empirical NTK and
the spec's bounds."""

import json
import math

import numpy as np
import pytest
from scipy.special import erf

import ntkcompute as nc
from ntkcompute import InputError, stax
from ntkcompute.kernels import expression as E
from ntkcompute.spec import parse_arch


def _fc(act, w=1.3, b=0.2):
    D = {"type": "dense", "W_std": w, "b_std": b}
    return {"layers": [D, act, D, act, D]}


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((5, 6))


@pytest.mark.parametrize(("expr", "layer"), [
    ("sin(x)", {"type": "sin"}),
    ("1.5 * cos(0.9 * x + 0.4)", {"type": "cos", "a": 1.5, "b": 0.9, "c": 0.4}),
    ("erf(x)", {"type": "erf"}),
    ("1.2 * erf(0.7 * x) + 0.1", {"type": "erf", "a": 1.2, "b": 0.7, "c": 0.1}),
    ("0.8 * exp(0.3 * x)", {"type": "exp", "a": 0.8, "b": 0.3}),
    ("1.5 * exp(-0.5 * x ** 2)", {"type": "gaussian", "a": 1.5, "b": -0.5}),
])
def test_expression_equals_the_closed_form_layer(x, expr, layer):
    k = nc.kernel(_fc({"type": "elementwise", "expr": expr, "deg": 200}), x)
    ref = nc.kernel(_fc(layer), x)
    for g in ("nngp", "ntk"):
        assert _rel(k[g], ref[g]) < 1e-10, (g, _rel(k[g], ref[g]))


def test_polynomial_is_exact_at_low_degree(x):
    # dense -> x**2 -> dense: K = W²(k11 k22 + 2 k12²) + b², Θ = W² Θ1 · 4 k12 + K
    w, b = 1.3, 0.2
    arch = {"layers": [{"type": "dense", "W_std": w, "b_std": b},
                       {"type": "elementwise", "expr": "x**2", "deg": 4},
                       {"type": "dense", "W_std": w, "b_std": b}]}
    k1 = w**2 * (x @ x.T) / x.shape[1] + b**2
    d = np.diag(k1)
    nngp = w**2 * (np.outer(d, d) + 2 * k1**2) + b**2
    ntk = w**2 * k1 * 4 * k1 + nngp
    k = nc.kernel(arch, x)
    assert _rel(k["nngp"], nngp) < 1e-13 and _rel(k["ntk"], ntk) < 1e-13


def test_relu_as_an_expression_converges_to_relu(x):
    ref = nc.kernel(_fc({"type": "relu"}), x)
    errs = [_rel(nc.kernel(_fc({"type": "elementwise", "expr": "max(x, 0)", "deg": d}),
                           x)["ntk"], ref["ntk"]) for d in (20, 80, 200)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 2e-3, errs


@pytest.mark.parametrize("text", [
    "x * tanh(x)", "sin(x) ** 2 - 1 / (1 + x ** 2)", "exp(-x * x / 2) * cos(3 * x)",
    "sqrt(1 + x ** 2)", "log(1 + x ** 2) + arctan(x)", "sigmoid(2 * x) * x",
    "softplus(x) - log1p(exp(x))", "x ** 3 - 2 * x", "(1 + x ** 2) ** 0.5",
    "(2 + sin(x)) ** cos(x)", "tanh(sinh(x) / cosh(x))", "expm1(x / 4) + arcsinh(x)",
    "-x / 2 + pi * e", "minimum(x, 1) + maximum(x, -1)", "abs(x) + relu(x) + step(x)",
])
def test_symbolic_derivative_matches_a_finite_difference(text):
    t = E.parse(text)
    g = np.linspace(-3.1, 3.3, 401)  # avoids the kinks at -1, 0, 1 exactly
    dt = E.derivative(t)
    h = 1e-5
    num = (E.evaluate(t, np, g + h) - E.evaluate(t, np, g - h)) / (2 * h)
    got = E.evaluate(dt, np, g)
    smooth = np.min(np.abs(g[:, None] - np.array([-1.0, 0.0, 1.0])), axis=1) > 2 * h
    assert np.allclose(got[smooth], num[smooth], rtol=1e-6, atol=1e-6)
    # the canonical text reads back as the same function
    assert np.allclose(E.evaluate(E.parse(E.unparse(t)), np, g), E.evaluate(t, np, g),
                       rtol=1e-15, atol=1e-15)


def test_kinks_take_relus_convention():
    g = np.array([-1.0, 0.0, 1.0])
    for text, want in [("max(x, 0)", [0, 0, 1]), ("abs(x)", [-1, 0, 1]),
                       ("min(x, 0)", [1, 0, 0]), ("relu(x)", [0, 0, 1])]:
        assert E.evaluate(E.derivative(E.parse(text)), np, g).tolist() == want, text


@pytest.mark.parametrize("fn", [
    "x * tanh(x)", lambda z: z * np.tanh(z), lambda z: np.where(z > 0, z, 0.1 * z)])
def test_user_activation_equals_the_empirical_ntk(x, fn):
    net = stax.serial(stax.Dense(4096, 1.2, 0.1), stax.ElementwiseNumerical(fn, 40),
                      stax.Dense(4096, 1.2, 0.1), stax.ElementwiseNumerical(fn, 40),
                      stax.Dense(1))
    k = net[2](x[:4], None, ("nngp", "ntk"))
    errs = [_rel(nc.empirical_kernel(net.spec, x[:4], width=4096, seed=s)["ntk"], k.ntk)
            for s in range(2)]
    assert np.mean(errs) < 0.06, errs
    # and the finite net of init_fn / apply_fn runs the same φ
    _, params = net[0](0, x.shape)
    assert np.all(np.isfinite(net[1](params, x)))


def test_callables_are_traced_to_expressions_or_kept_in_process():
    layer = stax.ElementwiseNumerical(lambda z: z * np.tanh(z) + np.maximum(z, 0) / 2, 30)
    assert layer.layers[0] == {"type": "elementwise", "expr": "x * tanh(x) + maximum(x, 0) / 2",
                               "deg": 30}
    json.dumps(layer.spec)  # travels
    gelu = stax.ElementwiseNumerical(lambda z: 0.5 * z * (1 + erf(z / math.sqrt(2))), 25)
    assert gelu.layers[0]["fn"] == "gelu"  # a listed function keeps its name
    assert stax.ElementwiseNumerical("x**3", 25).layers[0]["expr"] == "x**3"
    leaky = stax.ElementwiseNumerical(lambda z: np.where(z > 0, z, 0.1 * z), 25)
    assert isinstance(leaky.layers[0]["py"], nc.layers.activations.PyFunctions)
    with pytest.raises(TypeError):
        json.dumps(leaky.spec)
    with pytest.raises(Exception, match="cannot travel in a JSON spec"):
        parse_arch(leaky.spec).to_json()


def test_stax_elementwise_with_a_closed_form_nngp_fn(x):
    def nngp_fn(c, v1, v2):
        return np.arcsin(2 * c / np.sqrt((1 + 2 * v1) * (1 + 2 * v2))) * 2 / np.pi

    def d_nngp_fn(c, v1, v2):
        prod = (1 + 2 * v1) * (1 + 2 * v2)
        return 4 / (np.pi * np.sqrt(prod - 4 * c**2))

    ref = stax.serial(stax.Dense(1, 1.3, 0.2), stax.Erf(), stax.Dense(1, 1.3, 0.2), stax.Erf(),
                      stax.Dense(1))[2](x, None)
    for d in (None, d_nngp_fn):  # complex step, or given
        net = stax.serial(stax.Dense(1, 1.3, 0.2), stax.Elementwise(erf, nngp_fn, d),
                          stax.Dense(1, 1.3, 0.2), stax.Elementwise(erf, nngp_fn, d),
                          stax.Dense(1))
        k = net[2](x, None)
        assert _rel(k.nngp, ref.nngp) < 1e-13 and _rel(k.ntk, ref.ntk) < 1e-13
    # without nngp_fn: quadrature of fn
    k = stax.serial(stax.Dense(1, 1.3, 0.2), stax.Elementwise(np.sin), stax.Dense(1))[2](x, None)
    r = stax.serial(stax.Dense(1, 1.3, 0.2), stax.Sin(), stax.Dense(1))[2](x, None)
    assert _rel(k.ntk, r.ntk) < 1e-12


def test_elementwise_refusals_name_the_field():
    with pytest.raises(InputError) as e:
        stax.Elementwise()
    assert e.value.field == "fn"
    with pytest.raises(InputError) as e:  # no complex support, no d_nngp_fn
        stax.Elementwise(np.tanh, lambda c, a, b: float(np.real(c)) * 0.5)
    assert e.value.field == "d_nngp_fn"
    with pytest.raises(InputError) as e:
        stax.ElementwiseNumerical("cube", 25)
    assert e.value.field == "fn"


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')", "x.real", "y + x", "[x][0]", "x if x else 1",
    "lambda: x", "tanh(x, 1)", "tanh(x=1)", "'a'", "True", "1e400 * x", "x > 0",
    "x" + " + x" * 250, "sin(" * 40 + "x" + ")" * 40, "(" * 300 + "x" + ")" * 300, "",
    "x " * 600, 3,
])
def test_bad_expressions_are_refused_naming_expr(expr):
    with pytest.raises(InputError) as e:
        parse_arch(_fc({"type": "elementwise", "expr": expr}))
    assert (e.value.field, e.value.layer) == ("expr", 1)


def test_exactly_one_source_and_no_python_in_json():
    for layer in ({"type": "elementwise"}, {"type": "elementwise", "fn": "tanh", "expr": "x"}):
        with pytest.raises(InputError) as e:
            parse_arch(_fc(layer))
        assert e.value.field == "expr"
    with pytest.raises(InputError) as e:
        parse_arch(_fc({"type": "elementwise", "py": "<function>"}))
    assert e.value.field == "py"


def test_infinite_expectations_are_refused_at_the_kernel(x):
    with pytest.raises(InputError) as e:
        nc.kernel(_fc({"type": "elementwise", "expr": "log(x)"}), x)
    assert (e.value.field, e.value.layer) == ("expr", 1)


def test_a_listed_fn_dumps_as_before_so_stored_jobs_keep_their_identity():
    """A job's identity is its spec's JSON dump: a listed-fn layer must dump exactly as it
    did before ``expr`` and ``py`` existed, or every stored elementwise job would read as a
    different job and refuse to resume."""
    from ntkcompute import parse_arch

    arch = parse_arch({"layers": [{"type": "dense"},
                                  {"type": "elementwise", "fn": "tanh"},
                                  {"type": "dense"}]})
    assert arch.model_dump(mode="json")["layers"][1] == {"type": "elementwise", "fn": "tanh",
                                                         "deg": 25}
    expr = parse_arch({"layers": [{"type": "elementwise", "expr": "x * tanh(x)"},
                                  {"type": "dense"}]})
    assert expr.model_dump(mode="json")["layers"][0]["expr"] == "x * tanh(x)"
    assert parse_arch(expr.model_dump(mode="json")) == expr  # the dump parses back
