"""Resolver steps, one folder each, in chain order: cache (per client), local, cache (global),
[gather], authority, upstream. Each folder's README says what the step answers and when it passes on."""
