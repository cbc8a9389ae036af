"""The ``ntk`` command line and ``make demo``: the top layer, over ``service``, ``workers``
and ``ntkcompute`` (nothing below imports it).

Modules: ``main`` (the parser and :func:`~ntkcli.main.main`, the ``ntk`` entry point),
``local`` (``ntk gram/solve/scheduler/worker/certs``: the Dask side), ``serve`` (``ntk
serve/keys/submit/status/verify/fetch``: the service and its client), ``inputs`` (arrays and
architecture specs read from files), ``demo`` (``make demo``). ``python -m ntkcli`` is ``ntk``.
"""
