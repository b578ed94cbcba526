"""Read one CSAF 2.0 document and keep only what matching relies on, validated.

Why not a CSAF library: the ones on PyPI either generate documents (csaf-tool) or
validate the whole schema through jsonschema and several more dependencies
(csaf, csaf-lib, still beta), and none reports an error by JSON path under size
and nesting limits, which an importer fed from a USB stick needs. We check the
fields we use, as strictly as the CSAF 2.0 schema does for those fields, and
reject the whole document on the first problem: an advisory is never half
imported.

Limits (file size, nesting depth, string length) are checked before the content
is used, so a hostile or broken file costs bounded time and memory and its error
still says where it went wrong. The real CISA set stays well inside them: its
largest document is 0.7 MB, deepest 14 levels, longest string 3.2 kB.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 40
MAX_STRING = 256 * 1024
MAX_NODES = 2_000_000

_BRANCH_CATEGORIES = frozenset({
    "architecture", "host_name", "language", "legacy", "patch_level", "product_family",
    "product_name", "product_version", "product_version_range", "service_pack",
    "specification", "vendor"})
_AFFECTED = ("first_affected", "known_affected", "last_affected")
_STATUSES = (*_AFFECTED, "first_fixed", "fixed", "known_not_affected", "recommended",
             "under_investigation")
_REMEDIATIONS = frozenset({"mitigation", "no_fix_planned", "none_available", "vendor_fix",
                           "workaround"})
_CVE = re.compile(r"CVE-[0-9]{4}-[0-9]{4,}")
_DOC_VERSION = re.compile(
    r"(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-[0-9A-Za-z.-]+)?"
    r"(?:\+[0-9A-Za-z.-]+)?)?")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{},:]|[^\s\[\]{},:"]+', re.DOTALL)


class CsafError(ValueError):
    """A document that cannot be imported: which file, where in it, and what is wrong."""

    def __init__(self, source: str, path: str, message: str) -> None:
        super().__init__(f"{source}: {path}: {message}")
        self.source = source
        self.path = path
        self.message = message


class NotAnAdvisory(CsafError):
    """A JSON file of a CSAF distribution that is no advisory (a ROLIE feed, provider
    metadata): skipped by an import, not rejected."""


@dataclass(frozen=True, slots=True)
class Product:
    """One leaf of the product tree: a product id and the branch names above it."""

    product_id: str
    vendor: str
    family: str
    name: str  # the product_name branch (or the full name when there is none)
    full_name: str
    version: str  # product_version or product_version_range text, "" when absent
    version_kind: str  # "version", "range" or ""


@dataclass(frozen=True, slots=True)
class Remediation:
    category: str
    details: str
    product_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Vulnerability:
    cve: str | None
    title: str
    cvss: float | None  # highest base score given (v3 preferred over v2)
    vector: str | None
    affected: tuple[str, ...]
    remediations: tuple[Remediation, ...]


@dataclass(frozen=True, slots=True)
class Advisory:
    id: str
    title: str
    publisher: str
    version: str  # document revision (tracking.version)
    release_date: str  # tracking.current_release_date, ISO 8601
    products: tuple[Product, ...]
    vulnerabilities: tuple[Vulnerability, ...]
    source: str
    sha256: str

    @property
    def revision_key(self) -> tuple[tuple[int, ...], str]:
        """Orders revisions of one advisory: tracking.version, then the release date."""
        return version_key(self.version), self.release_date


def version_key(text: str) -> tuple[int, ...]:
    """``"3"`` → (3,); ``"1.2.0-rc1"`` → (1, 2, 0, -1): a pre-release sorts first."""
    head, _, pre = text.partition("-")
    parts = tuple(int(p) for p in head.split("+")[0].split("."))
    return (*parts, -1 if pre else 0)


# -- locating problems in the raw text -------------------------------------------------

def _format(path: Sequence[str | int]) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


def locate(text: str, offset: int | None = None, depth: int | None = None
           ) -> tuple[str, int]:
    """JSON path open at character ``offset``, or where nesting first exceeds ``depth``.

    Used only after the JSON parser failed (a truncated file, a syntax error, or
    nesting deep enough to exhaust its recursion), so a scan of the text is fine.
    Returns the path and the offset it refers to.
    """
    stack: list[list[Any]] = []  # [kind, key-or-index, expecting_key]
    last_key: str | int | None = None
    for m in _TOKEN.finditer(text):
        if offset is not None and m.start() >= offset:
            return _format([e[1] for e in stack if e[1] is not None]), m.start()
        tok = m.group()
        top = stack[-1] if stack else None
        if tok in ("{", "["):
            if top is not None and top[0] == "o":
                top[1] = last_key
            stack.append(["o" if tok == "{" else "a", None if tok == "{" else 0, True])
            if depth is not None and len(stack) > depth:
                return _format([e[1] for e in stack if e[1] is not None]), m.start()
        elif tok in ("}", "]"):
            if stack:
                stack.pop()
        elif tok == ",":
            if top is not None:
                if top[0] == "a":
                    top[1] += 1
                else:
                    top[2] = True
        elif tok == ":":
            if top is not None:
                top[2] = False
        elif top is not None and top[0] == "o" and top[2] and tok.startswith('"'):
            try:
                last_key = json.loads(tok)
            except ValueError:
                last_key = tok.strip('"')
            top[1] = last_key
    return _format([e[1] for e in stack if e[1] is not None]), len(text)


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line} column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def _check_limits(doc: Any, source: str) -> None:
    """Depth, string length and node count, walked without recursion."""
    stack: list[tuple[Any, tuple[Any, ...] | None, str | int | None, int]] = [
        (doc, None, None, 0)]
    nodes = 0

    def path_of(parent: tuple[Any, ...] | None, key: str | int | None) -> str:
        parts: list[str | int] = []
        if key is not None:
            parts.append(key)
        while parent is not None:
            if parent[1] is not None:
                parts.append(parent[1])
            parent = parent[0]
        return _format(parts[::-1])

    while stack:
        value, parent, key, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise CsafError(source, path_of(parent, key), f"more than {MAX_NODES} values")
        if isinstance(value, str):
            if len(value) > MAX_STRING:
                raise CsafError(source, path_of(parent, key),
                                f"string of {len(value)} characters (limit {MAX_STRING})")
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise CsafError(source, path_of(parent, key),
                                f"nested deeper than {MAX_DEPTH} levels")
            link = (parent, key)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                if isinstance(v, str | dict | list):
                    stack.append((v, link, k, depth + 1))
                else:
                    nodes += 1


# -- field checks -----------------------------------------------------------------------

class _Doc:
    """Typed access to the parsed document; every failure names its JSON path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> CsafError:
        return CsafError(self.source, path, message)

    def obj(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected an object, found {_kind(value)}")
        return value

    def arr(self, value: Any, path: str, *, nonempty: bool = False) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected an array, found {_kind(value)}")
        if nonempty and not value:
            raise self.fail(path, "expected a non-empty array")
        return value

    def text(self, value: Any, path: str, *, nonempty: bool = True) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, found {_kind(value)}")
        if nonempty and not value.strip():
            raise self.fail(path, "expected a non-empty string")
        return value

    def opt_text(self, parent: Mapping[str, Any], key: str, path: str) -> str:
        if key not in parent:
            return ""
        return self.text(parent[key], f"{path}.{key}", nonempty=False)

    def number(self, value: Any, path: str, lo: float, hi: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"expected a number, found {_kind(value)}")
        if not lo <= value <= hi:
            raise self.fail(path, f"{value} is outside {lo}..{hi}")
        return float(value)

    def date(self, value: Any, path: str) -> str:
        text = self.text(value, path)
        try:
            dt.datetime.fromisoformat(text)
        except ValueError:
            raise self.fail(path, f"{text!r} is not an ISO 8601 date-time") from None
        return text

    def ids(self, value: Any, path: str) -> tuple[str, ...]:
        return tuple(self.text(v, f"{path}[{i}]")
                     for i, v in enumerate(self.arr(value, path)))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def _branches(d: _Doc, branches: Any, path: str, context: dict[str, str],
              out: dict[str, Product], depth: int) -> None:
    for i, raw in enumerate(d.arr(branches, path, nonempty=True)):
        here = f"{path}[{i}]"
        branch = d.obj(raw, here)
        category = d.text(branch.get("category"), f"{here}.category")
        if category not in _BRANCH_CATEGORIES:
            raise d.fail(f"{here}.category", f"{category!r} is not a branch category")
        name = d.text(branch.get("name"), f"{here}.name")
        ctx = dict(context)
        ctx[category] = name.strip()
        has_sub, has_product = "branches" in branch, "product" in branch
        if has_sub == has_product:
            raise d.fail(here, "a branch needs exactly one of 'branches' and 'product'")
        if has_sub:
            _branches(d, branch["branches"], f"{here}.branches", ctx, out, depth + 1)
        else:
            _product(d, branch["product"], f"{here}.product", ctx, out)


def _product(d: _Doc, raw: Any, path: str, ctx: Mapping[str, str],
             out: dict[str, Product]) -> None:
    product = d.obj(raw, path)
    full_name = d.text(product.get("name"), f"{path}.name")
    pid = d.text(product.get("product_id"), f"{path}.product_id")
    if pid in out:
        raise d.fail(f"{path}.product_id", f"product id {pid!r} defined twice")
    if "product_version_range" in ctx:
        version, kind = ctx["product_version_range"], "range"
    elif "product_version" in ctx:
        version, kind = ctx["product_version"], "version"
    else:
        version, kind = "", ""
    out[pid] = Product(pid, ctx.get("vendor", ""), ctx.get("product_family", ""),
                       ctx.get("product_name", full_name.strip()), full_name.strip(),
                       version.strip(), kind)


def _vulnerability(d: _Doc, raw: Any, path: str, known: Mapping[str, Product]
                   ) -> Vulnerability:
    vuln = d.obj(raw, path)
    cve = None
    if "cve" in vuln:
        cve = d.text(vuln["cve"], f"{path}.cve")
        if not _CVE.fullmatch(cve):
            raise d.fail(f"{path}.cve", f"{cve!r} is not a CVE id")

    def defined(ids: tuple[str, ...], where: str) -> tuple[str, ...]:
        for i, pid in enumerate(ids):
            if pid not in known:
                raise d.fail(f"{where}[{i}]", f"product id {pid!r} is not in the product tree")
        return ids

    affected: list[str] = []
    if "product_status" in vuln:
        status = d.obj(vuln["product_status"], f"{path}.product_status")
        for key in _STATUSES:
            if key in status:
                ids = defined(d.ids(status[key], f"{path}.product_status.{key}"),
                              f"{path}.product_status.{key}")
                if key in _AFFECTED:
                    affected.extend(ids)
    best: tuple[float, str | None] | None = None
    for i, raw_score in enumerate(d.arr(vuln.get("scores", []), f"{path}.scores")):
        here = f"{path}.scores[{i}]"
        score = d.obj(raw_score, here)
        defined(d.ids(score.get("products"), f"{here}.products"), f"{here}.products")
        for kind in ("cvss_v3", "cvss_v2"):
            if kind in score:
                cvss = d.obj(score[kind], f"{here}.{kind}")
                base = d.number(cvss.get("baseScore"), f"{here}.{kind}.baseScore", 0.0, 10.0)
                vector = d.text(cvss.get("vectorString"), f"{here}.{kind}.vectorString")
                if best is None or base > best[0]:
                    best = (base, vector)
                break
    remediations = []
    for i, raw_rem in enumerate(d.arr(vuln.get("remediations", []), f"{path}.remediations")):
        here = f"{path}.remediations[{i}]"
        rem = d.obj(raw_rem, here)
        category = d.text(rem.get("category"), f"{here}.category")
        if category not in _REMEDIATIONS:
            raise d.fail(f"{here}.category", f"{category!r} is not a remediation category")
        details = d.text(rem.get("details"), f"{here}.details")
        pids = defined(d.ids(rem["product_ids"], f"{here}.product_ids"),
                       f"{here}.product_ids") if "product_ids" in rem else ()
        remediations.append(Remediation(category, details, pids))
    return Vulnerability(cve, d.opt_text(vuln, "title", path),
                         None if best is None else best[0], None if best is None else best[1],
                         tuple(dict.fromkeys(affected)), tuple(remediations))


def parse_document(doc: Any, source: str, sha256: str = "") -> Advisory:
    """The parts of a parsed CSAF document we rely on; raises CsafError."""
    _check_limits(doc, source)
    d = _Doc(source)
    root = d.obj(doc, "$")
    if "document" not in root:
        if "feed" in root:
            raise NotAnAdvisory(source, "$", "a ROLIE feed, not an advisory")
        if "canonical_url" in root and "metadata_version" in root:
            raise NotAnAdvisory(source, "$", "CSAF provider metadata, not an advisory")
    document = d.obj(root.get("document"), "$.document")
    csaf_version = d.text(document.get("csaf_version"), "$.document.csaf_version")
    if csaf_version != "2.0":
        raise d.fail("$.document.csaf_version", f"{csaf_version!r} is not CSAF 2.0")
    d.text(document.get("category"), "$.document.category")
    title = d.text(document.get("title"), "$.document.title")
    publisher = d.obj(document.get("publisher"), "$.document.publisher")
    publisher_name = d.text(publisher.get("name"), "$.document.publisher.name")
    tracking = d.obj(document.get("tracking"), "$.document.tracking")
    adv_id = d.text(tracking.get("id"), "$.document.tracking.id").strip()
    version = d.text(tracking.get("version"), "$.document.tracking.version")
    if not _DOC_VERSION.fullmatch(version):
        raise d.fail("$.document.tracking.version",
                     f"{version!r} is neither an integer nor a semantic version")
    release = d.date(tracking.get("current_release_date"),
                     "$.document.tracking.current_release_date")
    d.date(tracking.get("initial_release_date"), "$.document.tracking.initial_release_date")
    d.arr(tracking.get("revision_history"), "$.document.tracking.revision_history",
          nonempty=True)

    products: dict[str, Product] = {}
    if "product_tree" in root:
        tree = d.obj(root["product_tree"], "$.product_tree")
        if "branches" in tree:
            _branches(d, tree["branches"], "$.product_tree.branches", {}, products, 1)
        for i, raw in enumerate(d.arr(tree.get("full_product_names", []),
                                      "$.product_tree.full_product_names")):
            _product(d, raw, f"$.product_tree.full_product_names[{i}]", {}, products)
        for i, raw in enumerate(d.arr(tree.get("relationships", []),
                                      "$.product_tree.relationships")):
            here = f"$.product_tree.relationships[{i}]"
            rel = d.obj(raw, here)
            ref = d.text(rel.get("product_reference"), f"{here}.product_reference")
            if ref not in products:
                raise d.fail(f"{here}.product_reference",
                             f"product id {ref!r} is not in the product tree")
            full = d.obj(rel.get("full_product_name"), f"{here}.full_product_name")
            pid = d.text(full.get("product_id"), f"{here}.full_product_name.product_id")
            name = d.text(full.get("name"), f"{here}.full_product_name.name")
            base = products[ref]
            if pid in products:
                raise d.fail(f"{here}.full_product_name.product_id",
                             f"product id {pid!r} defined twice")
            products[pid] = Product(pid, base.vendor, base.family, base.name, name.strip(),
                                    base.version, base.version_kind)
    vulns = tuple(_vulnerability(d, raw, f"$.vulnerabilities[{i}]", products)
                  for i, raw in enumerate(d.arr(root.get("vulnerabilities", []),
                                                "$.vulnerabilities")))
    return Advisory(adv_id, title.strip(), publisher_name.strip(), version, release,
                    tuple(products.values()), vulns, source, sha256)


def read_document(path: Path) -> Advisory:
    """Read, bound, parse and validate one file; every failure is a located CsafError."""
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise CsafError(source, "$", f"file of {size} bytes (limit {MAX_BYTES})")
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise CsafError(source, "$", f"cannot read: {err.strerror or err}") from None
    if len(raw) > MAX_BYTES:
        raise CsafError(source, "$", f"file over {MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CsafError(source, "$", f"not UTF-8 at byte {err.start}") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        where, pos = locate(text, depth=MAX_DEPTH)
        raise CsafError(source, where, f"nested deeper than {MAX_DEPTH} levels "
                        f"({_line_col(text, pos)})") from None
    except json.JSONDecodeError as err:
        where, _ = locate(text, offset=err.pos)
        truncated = err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated")
        what = f"truncated document: {err.msg}" if truncated else err.msg
        raise CsafError(source, where, f"{what} ({_line_col(text, err.pos)})") from None
    return parse_document(doc, source, hashlib.sha256(raw).hexdigest())


def document_files(paths: Sequence[Path]) -> Iterator[Path]:
    """The ``*.json`` files under each directory (sorted), and each file given as is.

    A ROLIE feed (``*-feed-*.json``) sits beside the advisories in a CSAF
    distribution directory; it is an index, not an advisory, so it is skipped
    here by name, and by content (:class:`NotAnAdvisory`) whatever its name.
    """
    for path in paths:
        if path.is_dir():
            for found in sorted(path.rglob("*.json")):
                if found.is_file() and "feed" not in found.stem:
                    yield found
        else:
            yield path
