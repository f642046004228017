"""ClinicalTrials.gov through API v2 ``GET /studies``.

``query.term`` carries the query (the API's Essie syntax: AND/OR/NOT, parentheses, quotes);
``fields=NCTId`` keeps the answer to identifiers; ``pageSize`` is at most 1,000 and further pages
are reached with ``pageToken`` = the previous answer's ``nextPageToken``. ``countTotal=true`` on
the first page gives ``info["count"]``. The API accepts no per-call options here.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deepretrieval.search.live.client import LiveBackend, RetryableError

__all__ = ["CTGovBackend", "DEFAULT_URL"]

DEFAULT_URL = "https://clinicaltrials.gov/api/v2"
MAX_PAGE_SIZE = 1000


class CTGovBackend(LiveBackend):
    name = "ctgov"
    engine = "ctgov"
    allowed_options = frozenset()
    max_depth = 10_000

    def __init__(self, base_url: str = DEFAULT_URL, *, rate: float = 1.0,
                 page_size: int = MAX_PAGE_SIZE, **kw: Any) -> None:
        super().__init__(base_url, rate=rate, **kw)
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}")
        self.page_size = int(page_size)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "page_size": self.page_size}

    def _fetch(self, query: str, k: int, params: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
        ids: list[str] = []
        seen: set[str] = set()
        info: dict[str, Any] = {}
        token: str | None = None
        while len(ids) < k:
            req: dict[str, Any] = {"format": "json", "query.term": query, "fields": "NCTId",
                                   "pageSize": min(self.page_size, k - len(ids))}
            if token:
                req["pageToken"] = token
            else:
                req["countTotal"] = "true"
            body = self._get_json("studies", req, check=_check_page)
            if token is None and "totalCount" in body:
                info["count"] = int(body.get("totalCount") or 0)
            studies = body.get("studies") or []
            for study in studies:
                try:
                    nct = study["protocolSection"]["identificationModule"]["nctId"]
                except (KeyError, TypeError):
                    continue
                nct = str(nct)
                if nct not in seen:
                    seen.add(nct)
                    ids.append(nct)
            token = body.get("nextPageToken")
            if not token:
                break
        info.setdefault("count", len(ids))
        return ids[:k], info


def _check_page(body: Any) -> dict:
    if not isinstance(body, dict) or not isinstance(body.get("studies", []), list):
        raise RetryableError("studies answer without a 'studies' list", "bad_json")
    if not body.get("studies"):
        if body.get("nextPageToken"):
            raise RetryableError("empty page with a nextPageToken", "empty_page")
        try:
            total = int(body.get("totalCount") or 0)
        except (TypeError, ValueError):
            raise RetryableError("totalCount unreadable", "bad_json") from None
        if total > 0:
            raise RetryableError(f"empty first page although totalCount={total}", "empty_page")
    return body
