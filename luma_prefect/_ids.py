"""Generation ids that arrive as plain strings, checked before they reach a URL or a path.

Models and parameters typed `GenerationId` are checked by pydantic already; this is the
same rule for the strings users hand to the client, the command line and the ledger.
"""

from __future__ import annotations

from luma_prefect._exceptions import LumaConfigurationError
from luma_prefect._models import generation_id_problem

__all__ = ["check_generation_id"]


def check_generation_id(generation_id: object) -> str:
    """The id itself (stripped) when it is safe in a URL path and a folder name.

    Raises `LumaConfigurationError` otherwise, before anything is sent or written.
    """
    problem = generation_id_problem(generation_id)
    if problem:
        raise LumaConfigurationError(problem)
    return str(generation_id).strip()
