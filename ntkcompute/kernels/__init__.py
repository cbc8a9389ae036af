"""Kernel machinery shared by the layer rules of :mod:`ntkcompute.layers`: the pair state, window
sums, quadrature, the closed forms of the nonlinearities and of attention, random sketches,
and the loop that runs the rules along a plan (``propagate.run``)."""
