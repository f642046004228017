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
from deepretrieval.search.boolean import BooleanIndex

log = logging.getLogger(__name__)

SOURCES = ("pubmed", "ctgov")
_MONTHS = {m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                       "sep", "oct", "nov", "dec"], 1)}


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


def parse_pubmed_xml(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one baseline/update file; a deletion is ``{"_id": pmid, "deleted": True}``."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for _event, el in ET.iterparse(fh, events=("end",)):
            if el.tag == "PubmedArticle":
                yield pubmed_record(el)
                el.clear()
            elif el.tag == "DeleteCitation":
                for pmid in el.findall("PMID"):
                    yield {"_id": pmid.text.strip(), "deleted": True}
                el.clear()


def ctgov_record(study: dict[str, Any]) -> dict[str, Any]:
    p = study["protocolSection"]
    ident = p["identificationModule"]
    desc = p.get("descriptionModule", {})
    conditions = p.get("conditionsModule", {})
    browse = study.get("derivedSection", {}).get("conditionBrowseModule", {})
    status = p.get("statusModule", {})
    titles = [ident.get("briefTitle", ""), ident.get("officialTitle", "")]
    date = (status.get("startDateStruct") or {}).get("date")
    return {
        "_id": ident["nctId"],
        "title": " ".join(t for t in dict.fromkeys(titles) if t),
        "text": " ".join(t for t in (desc.get("briefSummary"), desc.get("detailedDescription")) if t),
        "mesh": [m["term"] for m in browse.get("meshes", [])] + list(conditions.get("conditions", [])),
        "pub_types": [p.get("designModule", {}).get("studyType", "")] if p.get("designModule") else [],
        "date": date or None,
    }


def parse_ctgov_json(path: Path) -> Iterator[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    for study in data.get("studies", [data]) if isinstance(data, dict) else data:
        yield ctgov_record(study)


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


def ingest(source: str, src: str | Path, work: str | Path, index_dir: str | Path, *,
           progress: Callable[[str], None] | None = print, name: str | None = None) -> MirrorStats:
    """Parse the source files under ``src`` not yet in ``work/parts``, then (re)build the Boolean
    index at ``index_dir`` from all parts. Safe to interrupt and rerun."""

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
        records = list(parse(path))
        _write_part(part, records)
        stats.parsed += 1
        stats.parsed_files.append(rel)
        say(f"[{n}/{len(files)}] {rel}: {len(records)} records ({time.monotonic() - t0:.1f}s)")
    (work / "files.json").write_text(json.dumps([p.name for p in order], indent=1))
    docs: dict[str, dict[str, Any]] = {}
    for part in order:
        for rec in read_json_lines_gz(part):
            if rec.get("deleted"):
                stats.deleted += docs.pop(rec["_id"], None) is not None
            else:
                docs.pop(rec["_id"], None)  # a later version moves to the end
                docs[rec["_id"]] = rec
    if not docs:
        raise ValueError(f"no records in the {source} files under {src}")
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
    "MirrorStats",
    "ctgov_record",
    "default_paths",
    "ingest",
    "parse_ctgov_json",
    "parse_pubmed_xml",
    "pubmed_record",
]
