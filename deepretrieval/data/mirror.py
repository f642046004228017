"""Local mirrors of PubMed (MEDLINE/PubMed baseline + update XML) and ClinicalTrials.gov (bulk
JSON), searched with the Boolean backend (``deepretrieval/search/boolean.py``).

Ingestion is per source file and resumable: each file is parsed into ``<work>/parts/<file>.jsonl.gz``
(written atomically, so a part is either complete or absent); a rerun skips the files that have a
part and parses the rest. The index is then built from all parts in file order — a record in a
later file replaces the earlier one with the same id (update files revise records), and PubMed's
``<DeleteCitation>`` removes it — and written atomically to the index directory.

* PubMed: ``pubmed*.xml.gz`` (or ``.xml``) files of ``<PubmedArticleSet>``: PMID, ArticleTitle,
  AbstractText (sections joined), MeSH DescriptorName, PublicationType, the journal issue's
  PubDate (``MedlineDate`` → its first year; month names → numbers).
* ClinicalTrials.gov: ``*.json`` study files of the bulk download (``AllPublicJSON.zip``
  unpacked; one API v2 study object per file, or a ``{"studies": [...]}`` page): NCT id, brief
  (and official) title, brief summary + detailed description, conditions and their MeSH terms,
  the start date.

Records: ``{"_id", "title", "text", "mesh", "pub_types", "date"}`` (``date`` ``YYYY[-MM[-DD]]``).

Malformed input never stops the run and is never stored: a record that breaks the schema (no or
blank id, a title that is not text, CT.gov ``conditions`` that is not a list of strings, a bad
date…) is skipped and counted, named by file and record; a file that cannot be read at all (not
XML / JSON, truncated, not UTF-8, no records) is skipped and counted, and gets no part, so a rerun
tries it again. Every record is checked (:func:`check_record`, dates included) before its part is
written and again when the index is built, so a stored part can never block a rerun. With
``strict`` the first malformed record or file stops the run (:class:`MirrorError`).
"""
from __future__ import annotations

import gzip
import json
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepretrieval.core.io import read_json_lines_gz, write_json_lines_gz
from deepretrieval.core.settings import index_dir
from deepretrieval.search.boolean import BooleanIndex, QueryError, record_date

log = logging.getLogger(__name__)

SOURCES = ("pubmed", "ctgov")
_MONTHS = {m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                       "sep", "oct", "nov", "dec"], 1)}


class MirrorError(ValueError):
    """A malformed record or file under ``strict`` (the message names the file and record)."""


class BadRecord(ValueError):
    """A record that breaks the schema (the reason; the caller names file and record)."""


@dataclass(frozen=True)
class Malformed:
    """A skipped record (or, ``record`` = ``"file"``, a whole file) and why."""

    file: str
    record: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.record}: {self.reason}"


#: What parsing a malformed record can raise (missing elements / keys, wrong types, bad values).
_RECORD_FAILURES = (BadRecord, AttributeError, TypeError, KeyError, ValueError)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing {exc.args[0]!r}"
    if isinstance(exc, AttributeError):
        return "missing element or wrong type"
    return str(exc) or type(exc).__name__


def _string(value: Any, what: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BadRecord(f"{what} is {type(value).__name__}, not text")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRecord(f"{what} is not a list of strings")
    return value


def check_record(rec: Any) -> dict[str, Any]:
    """The record, checked against the mirror schema (a deletion: ``{"_id", "deleted"}``):
    ``_id`` non-blank text (stripped), title/text text, mesh/pub_types lists of strings, a valid
    date or none. BadRecord otherwise."""
    if not isinstance(rec, dict):
        raise BadRecord("not a record")
    rid = _string(rec.get("_id"), "the id", required=True).strip()
    if not rid:
        raise BadRecord("blank id")
    if rec.get("deleted"):
        return {"_id": rid, "deleted": True}
    out = {"_id": rid, "title": _string(rec.get("title"), "the title"),
           "text": _string(rec.get("text"), "the text"),
           "mesh": _strings(rec.get("mesh"), "mesh"), "pub_types": _strings(rec.get("pub_types"), "pub_types"),
           "date": rec.get("date") or None}
    try:
        record_date(out["date"])
    except QueryError as exc:
        raise BadRecord(str(exc)) from None
    return out


def _text(el: ET.Element | None) -> str:
    if el is None:
        return ""
    return " ".join("".join(el.itertext()).split())


def _month(value: str) -> int | None:
    value = value.strip().lower()
    if value.isdigit():
        return int(value) if 1 <= int(value) <= 12 else None
    return _MONTHS.get(value[:3])


def pubmed_date(pubdate: ET.Element | None) -> str | None:
    """``<PubDate>`` → ``YYYY[-MM[-DD]]`` (``MedlineDate`` "1998 Dec-1999 Jan" → its first
    year and month)."""
    if pubdate is None:
        return None
    year = pubdate.findtext("Year")
    if year is None:
        m = re.match(r"\s*(\d{4})(?:\s+([A-Za-z]{3}))?", pubdate.findtext("MedlineDate") or "")
        if not m:
            return None
        month = _month(m.group(2)) if m.group(2) else None
        return f"{m.group(1)}-{month:02d}" if month else m.group(1)
    month = _month(pubdate.findtext("Month") or "")
    day = pubdate.findtext("Day")
    if month is None:
        return year.strip()
    if day and day.strip().isdigit():
        return f"{year.strip()}-{month:02d}-{int(day):02d}"
    return f"{year.strip()}-{month:02d}"


def pubmed_record(article: ET.Element) -> dict[str, Any]:
    citation = article.find("MedlineCitation")
    art = citation.find("Article")
    abstract = art.find("Abstract")
    return {
        "_id": citation.findtext("PMID").strip(),
        "title": _text(art.find("ArticleTitle")),
        "text": " ".join(_text(a) for a in abstract.findall("AbstractText")) if abstract is not None else "",
        "mesh": [_text(d) for d in citation.findall("MeshHeadingList/MeshHeading/DescriptorName")],
        "pub_types": [_text(p) for p in art.findall("PublicationTypeList/PublicationType")],
        "date": pubmed_date(art.find("Journal/JournalIssue/PubDate")),
    }


def parse_pubmed_xml(path: Path) -> Iterator[dict[str, Any] | Malformed]:
    """Records of one baseline/update file (checked, :func:`check_record`); a deletion is
    ``{"_id": pmid, "deleted": True}``; a malformed record is a :class:`Malformed` naming it. A
    file that is not (complete) XML raises."""
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    with opener(path, "rb") as fh:
        for _event, el in ET.iterparse(fh, events=("end",)):
            if el.tag == "PubmedArticle":
                n += 1
                try:
                    yield check_record(pubmed_record(el))
                except _RECORD_FAILURES as exc:
                    pmid = (el.findtext("MedlineCitation/PMID") or "").strip() or "no PMID"
                    yield Malformed(path.name, f"PubmedArticle {n} ({pmid})", _reason(exc))
                el.clear()
            elif el.tag == "DeleteCitation":
                for i, pmid in enumerate(el.findall("PMID"), 1):
                    try:
                        yield check_record({"_id": pmid.text, "deleted": True})
                    except _RECORD_FAILURES as exc:
                        yield Malformed(path.name, f"DeleteCitation PMID {i}", _reason(exc))
                el.clear()


def ctgov_record(study: dict[str, Any]) -> dict[str, Any]:
    """One API v2 study → a record (BadRecord / KeyError when it breaks the schema)."""
    if not isinstance(study, dict):
        raise BadRecord(f"the study is {type(study).__name__}, not an object")
    p = study["protocolSection"]
    ident = p["identificationModule"]
    desc = p.get("descriptionModule", {})
    conditions = p.get("conditionsModule", {})
    browse = study.get("derivedSection", {}).get("conditionBrowseModule", {})
    status = p.get("statusModule", {})
    titles = [_string(ident.get("briefTitle"), "briefTitle"),
              _string(ident.get("officialTitle"), "officialTitle")]
    date = (status.get("startDateStruct") or {}).get("date")
    texts = [_string(desc.get("briefSummary"), "briefSummary"),
             _string(desc.get("detailedDescription"), "detailedDescription")]
    design = p.get("designModule")
    return {
        "_id": _string(ident.get("nctId"), "nctId", required=True),
        "title": " ".join(t for t in dict.fromkeys(titles) if t),
        "text": " ".join(t for t in texts if t),
        "mesh": [_string(m["term"], "a mesh term", required=True) for m in browse.get("meshes", [])]
        + _strings(conditions.get("conditions", []), "conditions"),
        "pub_types": [_string(design.get("studyType", ""), "studyType")] if design else [],
        "date": _string(date, "the start date") or None,
    }


def parse_ctgov_json(path: Path) -> Iterator[dict[str, Any] | Malformed]:
    """Records of one study file (one study, or a ``{"studies": [...]}`` page); a malformed study
    is a :class:`Malformed` naming it. A file that is not JSON (or not UTF-8) raises."""
    data = json.loads(path.read_text(encoding="utf-8"))
    studies = data.get("studies", [data]) if isinstance(data, dict) else data
    if not isinstance(studies, list):
        raise BadRecord(f"'studies' is {type(studies).__name__}, not a list")
    for n, study in enumerate(studies, 1):
        try:
            yield check_record(ctgov_record(study))
        except _RECORD_FAILURES as exc:
            nct = study.get("protocolSection", {}).get("identificationModule", {}).get("nctId") \
                if isinstance(study, dict) and isinstance(study.get("protocolSection"), dict) \
                and isinstance(study["protocolSection"].get("identificationModule"), dict) else None
            yield Malformed(path.name, f"study {n}" + (f" ({nct})" if isinstance(nct, str) else ""),
                            _reason(exc))


PARSERS: dict[str, tuple[str, Callable[[Path], Iterator[dict[str, Any]]]]] = {
    "pubmed": ("pubmed*.xml*", parse_pubmed_xml),
    "ctgov": ("*.json", parse_ctgov_json),
}


@dataclass
class MirrorStats:
    files: int = 0            # source files seen
    parsed: int = 0           # parsed in this run
    skipped: int = 0          # already ingested by an earlier run
    records: int = 0          # documents in the index
    deleted: int = 0
    malformed: list[Malformed] = field(default_factory=list)  # skipped records and files
    index: Path | None = None
    seconds: float = 0.0
    parsed_files: list[str] = field(default_factory=list)


def source_files(source: str, src: Path) -> list[Path]:
    if source not in PARSERS:
        raise ValueError(f"unknown mirror source {source!r}; known: {list(SOURCES)}")
    pattern = PARSERS[source][0]
    files = sorted(p for p in Path(src).rglob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no {pattern} files under {src}")
    return files


def _write_part(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write_json_lines_gz(tmp, records)
    tmp.replace(path)


#: Malformed records named one by one per file (the rest are counted).
SHOW_MALFORMED = 5


def ingest(source: str, src: str | Path, work: str | Path, index_dir: str | Path, *,
           progress: Callable[[str], None] | None = print, name: str | None = None,
           strict: bool = False) -> MirrorStats:
    """Parse the source files under ``src`` not yet in ``work/parts``, then (re)build the Boolean
    index at ``index_dir`` from all parts. Safe to interrupt and rerun. Malformed records and
    files are skipped and counted (``stats.malformed``); ``strict``: the first stops the run
    (:class:`MirrorError`)."""

    start = time.monotonic()
    work, index_dir = Path(work), Path(index_dir)
    parts = work / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    files = source_files(source, Path(src))
    stats = MirrorStats(files=len(files))
    parse = PARSERS[source][1]
    say = progress or (lambda _msg: None)
    order = []
    for n, path in enumerate(files, 1):
        rel = path.relative_to(src).as_posix()
        part = parts / (rel.replace("/", "__") + ".jsonl.gz")
        order.append(part)
        if part.exists():
            stats.skipped += 1
            continue
        t0 = time.monotonic()
        try:
            items = list(parse(path))
            if not items:
                raise BadRecord(f"no {source} records in it")
        except Exception as exc:  # noqa: BLE001 - an unreadable file is skipped, never the run
            bad = Malformed(rel, "file", _reason(exc) if isinstance(exc, _RECORD_FAILURES)
                            else f"{type(exc).__name__}: {exc}")
            if strict:
                raise MirrorError(f"{bad} (--strict)") from None
            stats.malformed.append(bad)
            order.pop()  # no part: a rerun tries the file again
            say(f"[{n}/{len(files)}] skipped {bad}")
            continue
        records = [r for r in items if not isinstance(r, Malformed)]
        bad = [Malformed(rel, r.record, r.reason) for r in items if isinstance(r, Malformed)]
        if bad and strict:
            raise MirrorError(f"{bad[0]} (--strict)")
        _write_part(part, records)
        stats.parsed += 1
        stats.parsed_files.append(rel)
        stats.malformed += bad
        say(f"[{n}/{len(files)}] {rel}: {len(records)} records"
            + (f", {len(bad)} malformed skipped" if bad else "")
            + f" ({time.monotonic() - t0:.1f}s)")
        for b in bad[:SHOW_MALFORMED]:
            say(f"  skipped {b}")
        if len(bad) > SHOW_MALFORMED:
            say(f"  ... and {len(bad) - SHOW_MALFORMED} more in {rel}")
    (work / "files.json").write_text(json.dumps([p.name for p in order], indent=1))
    docs: dict[str, dict[str, Any]] = {}
    for part in order:
        for i, raw in enumerate(read_json_lines_gz(part), 1):
            try:  # parts of an older version may hold records checked less strictly
                rec = check_record(raw)
            except BadRecord as exc:
                bad = Malformed(part.name, f"stored record {i}", str(exc))
                if strict:
                    raise MirrorError(f"{bad} (--strict)") from None
                stats.malformed.append(bad)
                say(f"  skipped {bad}")
                continue
            if rec.get("deleted"):
                stats.deleted += docs.pop(rec["_id"], None) is not None
            else:
                docs.pop(rec["_id"], None)  # a later version moves to the end
                docs[rec["_id"]] = rec
    if stats.malformed:
        files_bad = sum(m.record == "file" for m in stats.malformed)
        say(f"skipped {len(stats.malformed) - files_bad} malformed record(s) and {files_bad} "
            f"unreadable file(s) (named above; --strict stops at the first)")
    if not docs:
        raise ValueError(f"no records in the {source} files under {src}"
                         + (f" ({len(stats.malformed)} malformed skipped)" if stats.malformed else ""))
    say(f"building the Boolean index of {len(docs)} records ...")
    index = BooleanIndex.build(list(docs.values()), name=name or index_dir.name)
    index.save(index_dir)
    stats.records, stats.index = len(docs), index_dir
    stats.seconds = time.monotonic() - start
    say(f"{source} mirror: {len(docs)} records from {len(files)} files "
        f"({stats.parsed} parsed now, {stats.skipped} already ingested) → {index_dir}")
    return stats


def default_paths(source: str) -> tuple[Path, Path]:
    """(work dir, index dir) of ``<source>_local`` under the index root."""
    name = f"{source}_local"
    return index_dir() / f"{name}.mirror", index_dir() / name


__all__ = [
    "SOURCES",
    "Malformed",
    "MirrorError",
    "check_record",
    "MirrorStats",
    "ctgov_record",
    "default_paths",
    "ingest",
    "parse_ctgov_json",
    "parse_pubmed_xml",
    "pubmed_record",
]
