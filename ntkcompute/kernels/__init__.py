"""Infinite-width kernel rules, one per layer type (see ``propagate.RULES``)."""
