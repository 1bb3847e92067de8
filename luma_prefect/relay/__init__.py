"""Talking to a relay: the HTTP client, where each style keeps its routes, and reading answers.

`LumaClient` (in `_client`) is the one way in; `_routes` says where each operation lives in
each API style, `_parsing` turns any relay's JSON into `Generation` objects, and `_answers`
turns an HTTP answer into its body or the right `LumaError`.
"""
