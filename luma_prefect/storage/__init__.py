"""Where files go: a local folder, an fsspec URL, or a Prefect filesystem block.

`storage_for(destination)` gives a `Storage`, the small interface shared by the download,
the publish step and the ledger.
"""

from luma_prefect.storage._base import Storage
from luma_prefect.storage._checks import check_relpath, disk_error
from luma_prefect.storage._factory import storage_for
from luma_prefect.storage._fsspec import FsspecStorage
from luma_prefect.storage._local import LocalStorage
from luma_prefect.storage._part import PartFile

__all__ = [
    "FsspecStorage",
    "LocalStorage",
    "PartFile",
    "Storage",
    "check_relpath",
    "disk_error",
    "storage_for",
]
