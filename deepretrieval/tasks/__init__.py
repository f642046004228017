"""Task families, one module each (``beir``, ``search_engine``, ``evidence``, ``sql``), on the
shared definitions in :mod:`deepretrieval.tasks.base`. Families never import search backends or
each other's internals beyond shared helpers; the list of families is in
:mod:`deepretrieval.catalog`."""
from deepretrieval.tasks.base import (
                                      ORIGINAL_QUERY,
                                      Family,
                                      SearchPlan,
                                      Task,
                                      UnknownTask,
                                      tasks_by_name,
)

__all__ = ["ORIGINAL_QUERY", "Family", "SearchPlan", "Task", "UnknownTask", "tasks_by_name"]
