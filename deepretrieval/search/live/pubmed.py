"""PubMed through NCBI E-utilities ``esearch`` (JSON).

* The term is sent URL-encoded by the HTTP client (GET), or form-encoded in a POST body when
  the encoded request would be long (NCBI recommends POST for long terms).
* Depth: ``retstart``/``retmax`` paging; one page holds at most ``page_size`` ids (E-utilities
  allow ``retmax`` up to 10,000, and PubMed serves only the first 10,000 records of a search).
* Option ``maxdate`` (``YYYY``, ``YYYY/MM``, ``YYYY/MM/DD``; ``-`` also accepted): publication-date
  cap with ``datetype=pdat`` (``mindate`` defaults to 1800, E-utilities need both); ``mindate``
  may be given too.
* ``api_key`` (raises NCBI's limit from 3 to 10 requests/s), ``tool`` and ``email`` are sent with
  every request; the key is never logged and never part of a cache key.
* ``SearchResult.info``: ``count`` (total hits), ``translation`` (NCBI's query translation),
  ``warnings`` / ``errors`` (phrases ignored or not found, output messages).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from deepretrieval.search.live.client import LiveBackend, LiveError, RetryableError

__all__ = ["PubMedBackend", "normalize_date", "DEFAULT_URL"]

DEFAULT_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils"
ESEARCH_MAX_RETMAX = 10_000
GET_URL_LIMIT = 2000  # longer requests go as POST

_DATE = re.compile(r"^(\d{4})(?:[/-](\d{1,2})(?:[/-](\d{1,2}))?)?$")


def normalize_date(value: Any) -> str:
    """``2020``, ``2020/4``, ``2020-04-09`` → E-utilities form (``2020``, ``2020/04``,
    ``2020/04/09``). ValueError for anything else."""
    text = str(value).strip()
    m = _DATE.match(text)
    if not m:
        raise ValueError(f"not a date (YYYY, YYYY/MM or YYYY/MM/DD): {value!r}")
    year, month, day = m.groups()
    if month and not 1 <= int(month) <= 12 or day and not 1 <= int(day) <= 31:
        raise ValueError(f"not a valid date: {value!r}")
    return "/".join([year] + [f"{int(p):02d}" for p in (month, day) if p])


class PubMedBackend(LiveBackend):
    name = "pubmed"
    engine = "pubmed"
    allowed_options = frozenset({"maxdate", "mindate"})
    max_depth = ESEARCH_MAX_RETMAX

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None,
                 tool: str = "deepretrieval", email: str | None = None, rate: float | None = None,
                 page_size: int = ESEARCH_MAX_RETMAX, sort: str | None = None, **kw: Any) -> None:
        if rate is None:
            rate = 10.0 if api_key else 3.0
        super().__init__(base_url, rate=rate, **kw)
        if not 1 <= page_size <= ESEARCH_MAX_RETMAX:
            raise ValueError(f"page_size must be 1..{ESEARCH_MAX_RETMAX}, got {page_size}")
        self._api_key = api_key or None
        self.secrets = (self._api_key,) if self._api_key else ()
        self.tool = tool
        self.email = email
        self.page_size = int(page_size)
        self.sort = sort

    def __repr__(self) -> str:  # never show the key
        return f"PubMedBackend({self.base_url!r}, api_key={'set' if self._api_key else 'none'})"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "api_key": bool(self._api_key), "page_size": self.page_size}

    def _params(self, options: Mapping[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if options.get("maxdate") not in (None, ""):
            params["maxdate"] = normalize_date(options["maxdate"])
        if options.get("mindate") not in (None, ""):
            params["mindate"] = normalize_date(options["mindate"])
        if params and "maxdate" not in params:
            raise ValueError("pubmed: mindate needs maxdate")
        if params:
            params.setdefault("mindate", "1800")
        if self.sort:
            params["sort"] = self.sort
        return params

    def _request_params(self, query: str, retstart: int, retmax: int,
                        params: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"db": "pubmed", "term": query, "retmode": "json",
                               "retstart": retstart, "retmax": retmax}
        if "maxdate" in params:
            out.update(datetype="pdat", mindate=params["mindate"], maxdate=params["maxdate"])
        if params.get("sort"):
            out["sort"] = params["sort"]
        if self.tool:
            out["tool"] = self.tool
        if self.email:
            out["email"] = self.email
        if self._api_key:
            out["api_key"] = self._api_key
        return out

    def _fetch(self, query: str, k: int, params: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
        ids: list[str] = []
        seen: set[str] = set()
        info: dict[str, Any] = {}
        count: int | None = None
        while len(ids) < k:
            retstart = len(ids)
            retmax = min(self.page_size, k - retstart)
            req = self._request_params(query, retstart, retmax, params)
            post = len(urlencode(req)) + len(self.base_url) > GET_URL_LIMIT
            result, page_count, page = self._get_json(
                "esearch.fcgi", req, post=post,
                check=lambda body, r=retstart: _check_page(body, r, k))
            if count is None:
                count = page_count
                info = _debug_info(result)
            if not page:
                break
            for pmid in page:
                if pmid not in seen:
                    seen.add(pmid)
                    ids.append(pmid)
            if retstart + len(page) >= page_count or len(page) < retmax:
                break
        info["count"] = count or 0
        return ids[:k], info


def _check_page(body: Any, retstart: int, k: int) -> tuple[dict, int, list[str]]:
    """An esearch JSON answer → (esearchresult, count, ids); RetryableError/LiveError when it
    cannot be used."""
    result = body.get("esearchresult") if isinstance(body, dict) else None
    if not isinstance(result, dict):
        raise RetryableError("esearch answer without 'esearchresult'", "bad_json")
    if "ERROR" in result:
        message = str(result["ERROR"])
        if re.search(r"backend|temporar|timeout|try again", message, re.I):
            raise RetryableError(f"esearch error: {message}", "esearch")
        raise LiveError(f"esearch error: {message}")
    try:
        count = int(result.get("count", 0))
    except (TypeError, ValueError):
        raise RetryableError(f"esearch count unreadable: {result.get('count')!r}", "bad_json") from None
    idlist = result.get("idlist") or []
    if not isinstance(idlist, list):
        raise RetryableError("esearch idlist is not a list", "bad_json")
    page = [str(i) for i in idlist]
    if not page and retstart < min(count, k):
        # NCBI now and then answers a page with no ids although count says there are more
        raise RetryableError(f"empty page at retstart={retstart} although count={count}", "empty_page")
    return result, count, page


def _debug_info(result: Mapping[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if result.get("querytranslation"):
        info["translation"] = result["querytranslation"]
    for name in ("warninglist", "errorlist"):
        block = result.get(name)
        if isinstance(block, dict):
            items = [f"{k}: {v}" for k, vals in block.items() for v in (vals or [])]
            if items:
                info["warnings" if name == "warninglist" else "errors"] = items
    return info
