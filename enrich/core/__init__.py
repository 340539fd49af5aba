"""Sans-I/O core: pure functions over plain data, no sockets, no clocks.

Everything here is deterministic and side-effect free so it can be tested
exhaustively (property tests included) and reused by any I/O shell: the
quart-trio webhook, the CLI, the bench and the test fakes.
"""
