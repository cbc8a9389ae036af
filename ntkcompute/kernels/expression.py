"""Safe activation expressions: ``"x * tanh(x)"`` parsed, differentiated and evaluated
without ``eval``.

An expression is parsed by :func:`ast.parse` and accepted only if every node is on a short
whitelist: numbers, the variable ``x``, the constants ``pi`` and ``e``, ``+ - * / **``, unary
``+``/``-``, and calls of the functions in :data:`UNARY` / :data:`BINARY` by name. Anything
else (attributes, subscripts, other names, keywords, comparisons, lambdas ...) is refused, so
nothing of the caller's (or the service's) Python is reachable from a spec. Sizes are bounded
before any work (:data:`MAX_CHARS`, :data:`MAX_NODES`, :data:`MAX_DEPTH`).

The tree is a nest of tuples (``("x",)``, ``("num", v)``, ``(op, a, b)``, ``("neg", a)``,
``("call", name, a[, b])``); :func:`derivative` differentiates it symbolically (exactly, the
rules of calculus on the same tree; the kinks of ``abs``, ``maximum``, ``minimum``, ``step``
and ``sign`` take the one-sided conventions ``relu'(0) = 0``, ``abs'(0) = 0``),
:func:`evaluate` runs it on NumPy / CuPy arrays, :func:`unparse` writes it back as text
(the canonical form the spec keeps), and :func:`trace` turns a Python callable made of NumPy
ufuncs and arithmetic into a tree by calling it on a symbol (``np.tanh(x) * x`` ->
``tanh(x) * x``), so a user's function can travel as JSON.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from ..backend import special

#: Longest expression text accepted (characters).
MAX_CHARS = 1000
#: Most nodes of a parsed expression (its derivative is bounded by the rules: see below).
MAX_NODES = 200
#: Deepest nesting of a parsed expression.
MAX_DEPTH = 32

Tree = tuple


def _sigmoid(xp: ModuleType, a: Any) -> Any:
    return 0.5 * (xp.tanh(0.5 * a) + 1.0)


def _step(xp: ModuleType, a: Any) -> Any:
    return (a > 0).astype(a.dtype) if hasattr(a, "astype") else float(a > 0)


#: name -> f(xp, a)
UNARY: dict[str, Callable[[ModuleType, Any], Any]] = {
    "sin": lambda xp, a: xp.sin(a), "cos": lambda xp, a: xp.cos(a),
    "tan": lambda xp, a: xp.tan(a), "exp": lambda xp, a: xp.exp(a),
    "log": lambda xp, a: xp.log(a), "sqrt": lambda xp, a: xp.sqrt(a),
    "abs": lambda xp, a: xp.abs(a), "tanh": lambda xp, a: xp.tanh(a),
    "sinh": lambda xp, a: xp.sinh(a), "cosh": lambda xp, a: xp.cosh(a),
    "arctan": lambda xp, a: xp.arctan(a), "arcsinh": lambda xp, a: xp.arcsinh(a),
    "log1p": lambda xp, a: xp.log1p(a), "expm1": lambda xp, a: xp.expm1(a),
    "erf": lambda xp, a: special(xp).erf(a), "sigmoid": _sigmoid,
    "softplus": lambda xp, a: xp.logaddexp(0.0, a), "sign": lambda xp, a: xp.sign(a),
    "step": _step, "relu": lambda xp, a: xp.maximum(a, 0.0),
}
#: name -> f(xp, a, b)
BINARY: dict[str, Callable[[ModuleType, Any, Any], Any]] = {
    "maximum": lambda xp, a, b: xp.maximum(a, b), "minimum": lambda xp, a, b: xp.minimum(a, b),
}
#: spellings accepted for a function, as written or as NumPy / SciPy ufunc names
ALIASES = {"max": "maximum", "min": "minimum", "absolute": "abs",
           "heaviside": "step", "expit": "sigmoid", "fabs": "abs"}
CONSTANTS = {"pi": math.pi, "e": math.e}

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow"}


class ExpressionError(ValueError):
    """Why an expression is refused (the spec turns it into an InputError on ``expr``)."""


# --- parsing ---------------------------------------------------------------------------------

def parse(text: str) -> Tree:
    """The tree of ``text``, an expression in ``x``.

    Raises:
        ExpressionError: too long, too large, too deep, not valid, or using anything off the
            whitelist.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"must be a string, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"is {len(text)} characters long, more than {MAX_CHARS}")
    if not text.strip():
        raise ExpressionError("is empty")
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ExpressionError(f"is not a valid expression: {e}") from None
    count = [0]
    tree = _build(node, 1, count)
    return tree


def _build(node: ast.AST, depth: int, count: list[int]) -> Tree:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise ExpressionError(f"has more than {MAX_NODES} operations, numbers and names")
    if depth > MAX_DEPTH:
        raise ExpressionError(f"nests deeper than {MAX_DEPTH} levels")
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ExpressionError(f"may only use real numbers, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise ExpressionError("may only use finite numbers")
        return ("num", v)
    if isinstance(node, ast.Name):
        if node.id == "x":
            return ("x",)
        if node.id in CONSTANTS:
            return ("num", CONSTANTS[node.id])
        raise ExpressionError(f"may only use the variable x and the constants pi and e, "
                              f"got {node.id!r}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return (_BINOPS[type(node.op)], _build(node.left, depth + 1, count),
                _build(node.right, depth + 1, count))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        a = _build(node.operand, depth + 1, count)
        return ("neg", a) if isinstance(node.op, ast.USub) else a
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.keywords:
            raise ExpressionError("may only call the listed functions by name, with "
                                  "positional arguments")
        name = ALIASES.get(node.func.id, node.func.id)
        arity = 1 if name in UNARY else 2 if name in BINARY else None
        if arity is None:
            raise ExpressionError(f"calls {node.func.id!r}, which is not one of "
                                  f"{', '.join(sorted((*UNARY, *BINARY)))}")
        if len(node.args) != arity or any(isinstance(a, ast.Starred) for a in node.args):
            raise ExpressionError(f"{node.func.id} takes {arity} argument(s), got "
                                  f"{len(node.args)}")
        return ("call", name, *(_build(a, depth + 1, count) for a in node.args))
    raise ExpressionError(f"may not contain {type(node).__name__} (only numbers, x, pi, e, "
                          "+ - * / **, and calls of the listed functions)")


# --- simplifying constructors (keep derivatives small) ---------------------------------------

def _num(v: float) -> Tree:
    return ("num", float(v))


def _is(t: Tree, v: float) -> bool:
    return t[0] == "num" and t[1] == v


def _add(a: Tree, b: Tree) -> Tree:
    if _is(a, 0.0):
        return b
    if _is(b, 0.0):
        return a
    if a[0] == "num" and b[0] == "num":
        return _num(a[1] + b[1])
    return ("add", a, b)


def _sub(a: Tree, b: Tree) -> Tree:
    if _is(b, 0.0):
        return a
    if _is(a, 0.0):
        return _neg(b)
    if a[0] == "num" and b[0] == "num":
        return _num(a[1] - b[1])
    return ("sub", a, b)


def _mul(a: Tree, b: Tree) -> Tree:
    if _is(a, 0.0) or _is(b, 0.0):
        return _num(0.0)
    if _is(a, 1.0):
        return b
    if _is(b, 1.0):
        return a
    if a[0] == "num" and b[0] == "num":
        return _num(a[1] * b[1])
    return ("mul", a, b)


def _div(a: Tree, b: Tree) -> Tree:
    if _is(a, 0.0):
        return _num(0.0)
    if _is(b, 1.0):
        return a
    return ("div", a, b)


def _neg(a: Tree) -> Tree:
    if a[0] == "num":
        return _num(-a[1])
    if a[0] == "neg":
        return a[1]
    return ("neg", a)


def _call(name: str, *args: Tree) -> Tree:
    return ("call", name, *args)


# --- derivative ------------------------------------------------------------------------------

def derivative(t: Tree) -> Tree:
    """``d t / d x``, symbolically (chain, product and quotient rules on the tree)."""
    kind = t[0]
    if kind == "num":
        return _num(0.0)
    if kind == "x":
        return _num(1.0)
    if kind == "neg":
        return _neg(derivative(t[1]))
    if kind in ("add", "sub"):
        return (_add if kind == "add" else _sub)(derivative(t[1]), derivative(t[2]))
    if kind == "mul":
        a, b = t[1], t[2]
        return _add(_mul(derivative(a), b), _mul(a, derivative(b)))
    if kind == "div":
        a, b = t[1], t[2]
        return _div(_sub(_mul(derivative(a), b), _mul(a, derivative(b))), _mul(b, b))
    if kind == "pow":
        a, b = t[1], t[2]
        da, db = derivative(a), derivative(b)
        if b[0] == "num":  # d a^c = c a^(c-1) a'
            c = b[1]
            if c == 0.0:
                return _num(0.0)
            low = a if c == 2.0 else ("pow", a, _num(c - 1.0))
            return _mul(_mul(_num(c), low), da)
        # d a^b = a^b (b' log a + b a' / a)
        return _mul(t, _add(_mul(db, _call("log", a)), _div(_mul(b, da), a)))
    if kind == "call":
        name = t[1]
        if name in BINARY:
            a, b = t[2], t[3]
            # the derivative of the argument that is taken; ties: the second (relu'(0) = 0)
            cond = ("gt", a, b) if name == "maximum" else ("gt", b, a)
            return ("where", cond, derivative(a), derivative(b))
        a = t[2]
        da = derivative(a)
        if _is(da, 0.0):
            return _num(0.0)
        return _mul(_outer(name, a), da)
    raise AssertionError(kind)


def _outer(name: str, a: Tree) -> Tree:
    """``f'(a)`` for a unary function ``f`` of the whitelist."""
    if name == "sin":
        return _call("cos", a)
    if name == "cos":
        return _neg(_call("sin", a))
    if name == "tan":
        c = _call("cos", a)
        return _div(_num(1.0), _mul(c, c))
    if name == "exp":
        return _call("exp", a)
    if name == "log":
        return _div(_num(1.0), a)
    if name == "sqrt":
        return _div(_num(0.5), _call("sqrt", a))
    if name == "abs":
        return _call("sign", a)
    if name == "tanh":
        th = _call("tanh", a)
        return _sub(_num(1.0), _mul(th, th))
    if name == "sinh":
        return _call("cosh", a)
    if name == "cosh":
        return _call("sinh", a)
    if name == "arctan":
        return _div(_num(1.0), _add(_num(1.0), _mul(a, a)))
    if name == "arcsinh":
        return _div(_num(1.0), _call("sqrt", _add(_num(1.0), _mul(a, a))))
    if name == "log1p":
        return _div(_num(1.0), _add(_num(1.0), a))
    if name == "expm1":
        return _call("exp", a)
    if name == "erf":
        return _mul(_num(2.0 / math.sqrt(math.pi)), _call("exp", _neg(_mul(a, a))))
    if name == "sigmoid":
        s = _call("sigmoid", a)
        return _mul(s, _sub(_num(1.0), s))
    if name == "softplus":
        return _call("sigmoid", a)
    if name in ("sign", "step"):
        return _num(0.0)
    if name == "relu":
        return _call("step", a)
    raise AssertionError(name)


# --- evaluation ------------------------------------------------------------------------------

def evaluate(t: Tree, xp: ModuleType, x: Any) -> Any:
    """The expression at ``x`` (an array of module ``xp``); the result has ``x``'s shape."""
    out = _eval(t, xp, x)
    if not hasattr(out, "shape") or out.shape != x.shape:  # a constant (or x-free) expression
        out = xp.broadcast_to(xp.asarray(out, dtype=x.dtype), x.shape)
    return out


def _eval(t: Tree, xp: ModuleType, x: Any) -> Any:
    kind = t[0]
    if kind == "num":
        return t[1]
    if kind == "x":
        return x
    if kind == "neg":
        return -_eval(t[1], xp, x)
    if kind == "add":
        return _eval(t[1], xp, x) + _eval(t[2], xp, x)
    if kind == "sub":
        return _eval(t[1], xp, x) - _eval(t[2], xp, x)
    if kind == "mul":
        return _eval(t[1], xp, x) * _eval(t[2], xp, x)
    if kind == "div":
        return _eval(t[1], xp, x) / _eval(t[2], xp, x)
    if kind == "pow":
        a, b = _eval(t[1], xp, x), _eval(t[2], xp, x)
        if t[2][0] == "num" and float(b).is_integer() and abs(b) <= 64:
            return _ipow(a, int(b))
        return xp.power(a, b) if hasattr(a, "shape") or hasattr(b, "shape") else a**b
    if kind == "call":
        args = [_eval(a, xp, x) for a in t[2:]]
        args = [a if hasattr(a, "shape") else xp.asarray(a, dtype=x.dtype) for a in args]
        f = UNARY.get(t[1]) or BINARY[t[1]]
        return f(xp, *args)
    if kind == "where":
        c, a, b = t[1], _eval(t[2], xp, x), _eval(t[3], xp, x)
        return xp.where(_eval(c[1], xp, x) > _eval(c[2], xp, x), a, b)
    raise AssertionError(kind)


def _ipow(a: Any, n: int) -> Any:
    """``a**n`` for an integer ``n`` by multiplications: ``(-2)**2`` stays real and exact."""
    if n < 0:
        return 1.0 / _ipow(a, -n)
    out, base = None, a
    while n:
        if n & 1:
            out = base if out is None else out * base
        n >>= 1
        if n:
            base = base * base
    return 1.0 if out is None else out


# --- text ------------------------------------------------------------------------------------

_PREC = {"add": 1, "sub": 1, "mul": 2, "div": 2, "neg": 3, "pow": 4}
_SYM = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}


def unparse(t: Tree) -> str:
    """Text that :func:`parse` reads back as ``t`` (numbers as ``repr`` of their floats)."""
    kind = t[0]
    if kind == "num":
        v = t[1]
        s = repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
        return f"({s})" if v < 0 else s
    if kind == "x":
        return "x"
    if kind == "call":
        return f"{t[1]}({', '.join(unparse(a) for a in t[2:])})"
    if kind == "neg":
        return f"-{_wrap(t[1], 3, False)}"
    p = _PREC[kind]
    right_assoc = kind == "pow"
    return f"{_wrap(t[1], p, right_assoc)} {_SYM[kind]} {_wrap(t[2], p, not right_assoc)}"


def _wrap(t: Tree, p: int, strict: bool) -> str:
    s = unparse(t)
    q = _PREC.get(t[0], 5)
    return f"({s})" if q < p or (strict and q == p) else s


# --- tracing a Python callable ---------------------------------------------------------------

_UFUNCS = {"sin": "sin", "cos": "cos", "tan": "tan", "exp": "exp", "log": "log",
           "sqrt": "sqrt", "absolute": "abs", "fabs": "abs", "tanh": "tanh", "sinh": "sinh",
           "cosh": "cosh", "arctan": "arctan", "arcsinh": "arcsinh", "log1p": "log1p",
           "expm1": "expm1", "erf": "erf", "expit": "sigmoid", "sign": "sign",
           "maximum": "maximum", "minimum": "minimum", "fmax": "maximum", "fmin": "minimum",
           "add": "add", "subtract": "sub", "multiply": "mul", "true_divide": "div",
           "divide": "div", "power": "pow", "negative": "neg", "square": "square",
           "positive": "pos"}


class _Untraceable(Exception):
    pass


class _Sym:
    """A symbolic ``x``: arithmetic and NumPy ufuncs on it build a tree."""

    __array_priority__ = 1000

    def __init__(self, t: Tree) -> None:
        self.t = t

    @staticmethod
    def _of(v: Any) -> Tree:
        if isinstance(v, _Sym):
            return v.t
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            if not math.isfinite(float(v)):
                raise _Untraceable
            return _num(float(v))
        if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "iuf":
            return _num(float(v))
        raise _Untraceable

    def _bin(self, op: str, other: Any, rev: bool = False) -> _Sym:
        a, b = self.t, self._of(other)
        return _Sym((op, b, a) if rev else (op, a, b))

    def __add__(self, o): return self._bin("add", o)
    def __radd__(self, o): return self._bin("add", o, True)
    def __sub__(self, o): return self._bin("sub", o)
    def __rsub__(self, o): return self._bin("sub", o, True)
    def __mul__(self, o): return self._bin("mul", o)
    def __rmul__(self, o): return self._bin("mul", o, True)
    def __truediv__(self, o): return self._bin("div", o)
    def __rtruediv__(self, o): return self._bin("div", o, True)
    def __pow__(self, o): return self._bin("pow", o)
    def __rpow__(self, o): return self._bin("pow", o, True)
    def __neg__(self): return _Sym(("neg", self.t))
    def __pos__(self): return self
    def __abs__(self): return _Sym(_call("abs", self.t))

    def __bool__(self) -> bool:  # control flow on x cannot be traced
        raise _Untraceable

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> _Sym:
        name = _UFUNCS.get(ufunc.__name__)
        if method != "__call__" or kwargs or name is None:
            raise _Untraceable
        args = [self._of(v) for v in inputs]
        if name in ("add", "sub", "mul", "div", "pow"):
            return _Sym((name, *args))
        if name == "neg":
            return _Sym(("neg", args[0]))
        if name == "pos":
            return _Sym(args[0])
        if name == "square":
            return _Sym(("pow", args[0], _num(2.0)))
        return _Sym(_call(name, *args))


def trace(fn: Callable[[Any], Any]) -> Tree | None:
    """The tree of ``fn`` if calling it on a symbol builds one (arithmetic and the listed
    NumPy / SciPy ufuncs only), else None. The caller checks it against ``fn`` on a grid."""
    try:
        out = fn(_Sym(("x",)))
    except Exception:  # anything that is not symbolic arithmetic: not traceable
        return None
    if not isinstance(out, _Sym):
        return None
    return out.t


def size(t: Tree) -> tuple[int, int]:
    """``(nodes, depth)`` of a tree."""
    if t[0] in ("num", "x"):
        return 1, 1
    subs = [a for a in t[1:] if isinstance(a, tuple)]
    sizes = [size(a) for a in subs]
    return 1 + sum(n for n, _ in sizes), 1 + max(d for _, d in sizes)
