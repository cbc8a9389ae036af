"""nt's predictive-uncertainty calls, run as written with ``neural_tangents`` or with
``ntkcompute`` (the import line is the only difference).

``python bench/predict_examples.py nt|ntkcompute OUT.npz`` writes every mean and covariance;
``bench/conformance.py`` compares the two files.
"""

import sys

import numpy as np

SOURCE = """
{imports}

rng = np.random.default_rng(0)
x_train, x_test = rng.standard_normal((20, 6)), rng.standard_normal((7, 6))
y_train = np.sin(x_train[:, :2] @ np.array([[1.0, -0.5], [0.3, 0.8]]))
_, _, kernel_fn = stax.serial(stax.Dense(256, W_std=1.5, b_std=0.05), stax.Erf(),
                              stax.Dense(256, W_std=1.5, b_std=0.05), stax.Relu(),
                              stax.Dense(1, W_std=1.5, b_std=0.05))
out = {{}}
for reg, absolute in ((0.0, False), (1e-2, False), (1e-3, True)):
    predict_fn = predict.gradient_descent_mse_ensemble(
        kernel_fn, x_train, y_train, learning_rate=0.5, diag_reg=reg,
        diag_reg_absolute_scale=absolute)
    for ti, t in enumerate((0.0, 3.0, 50.0, [1.0, 10.0, 1e3], None)):
        for x_name, x in (("test", x_test), ("train", None)):
            g = predict_fn(t=t, x_test=x, get=("nngp", "ntk"), compute_cov=True)
            for kind in ("nngp", "ntk"):
                key = f"{{reg}}_{{absolute}}_{{ti}}_{{x_name}}_{{kind}}"
                out[key + "_mean"] = np.asarray(getattr(g, kind).mean)
                out[key + "_cov"] = np.asarray(getattr(g, kind).covariance)
    k_dd = kernel_fn(x_train, None, ("nngp", "ntk"))
    k_td = kernel_fn(x_test, x_train, ("nngp", "ntk"))
    k_tt = kernel_fn(x_test, None, "nngp")
    out.update(k_dd_nngp=k_dd.nngp, k_dd_ntk=k_dd.ntk, k_td_nngp=k_td.nngp,
               k_td_ntk=k_td.ntk, k_tt=k_tt, y_train=y_train)
    inf = predict.gp_inference(k_dd, y_train, diag_reg=reg or 1e-9,
                               diag_reg_absolute_scale=absolute)
    g = inf(get=("nngp", "ntk"), k_test_train=k_td, k_test_test=k_tt)
    for kind in ("nngp", "ntk"):
        out[f"gp_{{reg}}_{{absolute}}_{{kind}}_mean"] = np.asarray(getattr(g, kind).mean)
        out[f"gp_{{reg}}_{{absolute}}_{{kind}}_cov"] = np.asarray(getattr(g, kind).covariance)
"""

IMPORTS = {
    "nt": "import jax\njax.config.update('jax_enable_x64', True)\n"
          "from neural_tangents import stax, predict",
    "ntkcompute": "from ntkcompute import stax, predict",
}


def posterior(source: str, k: dict) -> dict:
    """``gp_inference``'s NNGP and NTK Gaussians of the library ``source`` on the kernels
    in ``k`` (the arrays :func:`run` saves): the prediction step alone, on given kernels."""
    ns: dict = {"np": np}
    exec(IMPORTS[source], ns)
    fn = ns["predict"].gp_inference({"nngp": k["k_dd_nngp"], "ntk": k["k_dd_ntk"]},
                                    k["y_train"], diag_reg=1e-9)
    g = fn(get=("nngp", "ntk"), k_test_train={"nngp": k["k_td_nngp"], "ntk": k["k_td_ntk"]},
           k_test_test=k["k_tt"])
    return {f"{kind}_{part}": np.asarray(getattr(getattr(g, kind), part), np.float64)
            for kind in ("nngp", "ntk") for part in ("mean", "covariance")}


def run(source: str) -> dict:
    """Run the example with ``source``'s imports; every output array by name."""
    ns: dict = {"np": np}
    exec(SOURCE.format(imports=IMPORTS[source]), ns)
    return {k: np.asarray(v, dtype=np.float64) for k, v in ns["out"].items()}


if __name__ == "__main__":
    np.savez(sys.argv[2], **run(sys.argv[1]))
