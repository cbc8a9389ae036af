"""REST front end of ntkcompute (issue 5)."""
