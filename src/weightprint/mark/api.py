"""Library functions behind ``weightprint mark init|issue|trace|verify``.

Each returns a dataclass with ``to_dict()`` (JSON-safe; never holds key material).
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from weightprint.io.limits import pid_alive
from weightprint.progress import ProgressCallback
from weightprint.constants import FileType, parse_file_type
from weightprint.errors import NotComparableError, RegistryError, WeightprintError
from weightprint.mark.keys import CreatedKey, KeyFileExists, create_key_file_exclusive, load_key_file, new_salt
from weightprint.mark.registry import (
    DEFAULT_REGISTRY_URL,
    CopyRecord,
    RegistryKeyMismatch,
    _redact,
    check_url,
    create_registry,
    open_registry,
)
from weightprint.mark.scheme import DEFAULT_DELTA, SCHEME_VERSION, embed_tensor, is_marked_tensor
from weightprint.mark.trace import CopyTest, correlate_leak
from weightprint.results import TestResult, VerdictResult, format_pvalue
from weightprint.io import file_sha256, model_sha256

DEFAULT_ALPHA = 1e-9
STAGING_DIR = ".weightprint-staging"


# ---------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistryInfo:
    """Result of :func:`init_registry`."""

    url: str
    registry_id: str
    scheme_version: str
    key_file: str
    key_fingerprint: str
    created_registry: bool
    created_key: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": _redact(self.url),
            "registry_id": self.registry_id,
            "scheme_version": self.scheme_version,
            "key_file": self.key_file,
            "key_fingerprint": self.key_fingerprint,
            "created_registry": self.created_registry,
            "created_key": self.created_key,
        }


@dataclass(frozen=True)
class IssueResult:
    """Result of :func:`issue_copy`."""

    issue_id: str
    recipient: str
    output: str
    output_sha256: str
    source: str
    source_sha256: str
    file_type: str
    scheme_version: str
    delta: float
    n_marked_tensors: int
    n_marked_weights: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RecipientTest:
    """One registered copy's test in a trace."""

    issue_id: str
    recipient: str
    file_type: str
    result: TestResult
    log10_pvalue_bonferroni: float
    accused: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "issue_id": self.issue_id,
            "recipient": self.recipient,
            "file_type": self.file_type,
            "z": self.result.statistic,
            "log10_pvalue": self.result.log10_pvalue,
            "pvalue_text": self.result.pvalue_text(),
            "log10_pvalue_bonferroni": self.log10_pvalue_bonferroni,
            "pvalue_bonferroni_text": format_pvalue(self.log10_pvalue_bonferroni),
            "accused": self.accused,
            "test": self.result.to_dict(),
        }


@dataclass(frozen=True)
class TraceVerdict(VerdictResult):
    """Result of :func:`trace_leak`.

    ``accused`` holds the copies whose Bonferroni-corrected p-value (over all copies tested)
    is below ``alpha``, most significant first; empty means "no registered recipient".
    ``false_accusation_bound`` is the corrected p-value of the top accusation: the probability,
    under H0 for every copy, that any innocent copy scores as high.
    """

    leaked: str
    source: str
    source_sha256: str
    alpha: float
    n_copies: int
    tests: list[RecipientTest]
    accused: list[RecipientTest]
    alignment: dict[str, Any]
    n_weights: int
    seconds: float

    EVIDENCE_VERDICTS = frozenset({"accused"})

    @property
    def verdict(self) -> str:
        """``accused`` (some copy's corrected p-value is below alpha) or ``no evidence``."""
        return "accused" if self.accused else "no evidence"

    @property
    def evidence(self) -> list[TestResult]:
        return [t.result for t in self.tests]

    @property
    def accused_recipient(self) -> str | None:
        return self.accused[0].recipient if self.accused else None

    @property
    def false_accusation_bound(self) -> float | None:
        return 10.0 ** self.accused[0].log10_pvalue_bonferroni if self.accused else None

    def summary(self) -> str:
        if not self.accused:
            best = min(self.tests, key=lambda t: t.result.log10_pvalue) if self.tests else None
            tail = f" (best: `{best.recipient}`, {format_pvalue(best.log10_pvalue_bonferroni)} after correction)" if best else ""
            return f"no registered recipient at alpha = {self.alpha:g}{tail}"
        top = self.accused[0]
        more = f"; also {', '.join('`' + a.recipient + '`' for a in self.accused[1:])}" if len(self.accused) > 1 else ""
        return (f"accused `{top.recipient}` (issue {top.issue_id}): {top.result.pvalue_text()}, "
                f"false-accusation bound {format_pvalue(top.log10_pvalue_bonferroni)} over {self.n_copies} copies{more}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "leaked": self.leaked,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "alpha": self.alpha,
            "n_copies": self.n_copies,
            "verdict": self.verdict,
            "accused": [a.recipient for a in self.accused],
            "accused_issue_ids": [a.issue_id for a in self.accused],
            "false_accusation_bound": self.false_accusation_bound,
            "log10_false_accusation_bound": self.accused[0].log10_pvalue_bonferroni if self.accused else None,
            "summary": self.summary(),
            "tests": [t.to_dict() for t in self.tests],
            "alignment": self.alignment,
            "n_weights": self.n_weights,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class VerifyResult(VerdictResult):
    """Result of :func:`verify_file`: ``match`` is ``exact``, ``watermark`` or ``none``."""

    path: str
    sha256: str
    match: str
    record: CopyRecord | None = None
    trace: TraceVerdict | None = None
    note: str = ""

    EVIDENCE_VERDICTS = frozenset({"exact copy", "watermark"})

    @property
    def verdict(self) -> str:
        """``exact copy``, ``watermark`` or ``no match``."""
        return {"exact": "exact copy", "watermark": "watermark"}.get(self.match, "no match")

    @property
    def evidence(self) -> list[TestResult]:
        return self.trace.evidence if self.trace is not None else []

    def summary(self) -> str:
        if self.match == "exact" and self.record is not None:
            return f"exact copy issued to `{self.record.recipient}` (issue {self.record.issue_id})"
        if self.match == "watermark" and self.trace is not None:
            return f"watermark: {self.trace.summary()}"
        return f"no registered copy matches {self.path}" + (f" ({self.note})" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "match": self.match,
            "record": self.record.to_dict() if self.record else None,
            "verdict": self.verdict,
            "trace": self.trace.to_dict() if self.trace else None,
            "note": self.note,
        }


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _validate_recipient(recipient: str) -> str:
    if not isinstance(recipient, str) or not recipient.strip():
        raise WeightprintError("recipient name is empty")
    r = recipient.strip()
    if len(r) > 200:
        raise WeightprintError(f"recipient name has {len(r)} characters, at most 200 allowed")
    if any(ord(ch) < 32 for ch in r):
        raise WeightprintError("recipient name contains control characters")
    return r


def _clean_stale_staging(directory: Path) -> None:
    """Remove staging folders of issuing processes that died (SIGKILL leaves them behind)."""
    root = directory / STAGING_DIR
    if not root.is_dir():
        return
    for sub in root.iterdir():
        pid_text = sub.name.split("-", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            shutil.rmtree(sub, ignore_errors=True)
    try:
        root.rmdir()  # only when empty
    except OSError:
        pass


def _open_model(path: str | Path):
    from weightprint.io import open_model

    return open_model(path)


# ---------------------------------------------------------------------------------------
# init
# ---------------------------------------------------------------------------------------
def init_registry(url: str = DEFAULT_REGISTRY_URL, key_file: str | Path = "weightprint-master.key") -> RegistryInfo:
    """Create a registry and a master key file (0600), or reuse a key file that exists.

    Parameters
    ----------
    url : str, *optional*, defaults to ``sqlite:///weightprint-registry.db``
        SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://user@host/db``).
    key_file : str or Path, *optional*
        Master key file; created with a fresh 32-byte secret when it does not exist.

    Returns
    -------
    RegistryInfo

    Raises
    ------
    RegistryError
        Bad URL, unreachable database, or a registry created with another key.
    """
    key_path = Path(key_file)
    check_url(url)  # a malformed URL is refused before a key file is written
    try:  # exactly one of several concurrent inits creates the key; the others load it
        new_key: CreatedKey | None = create_key_file_exclusive(key_path)
        master = new_key.master
    except KeyFileExists:
        new_key = None
        master = load_key_file(key_path)
    try:
        reg, header, created = create_registry(url, master)
    except RegistryKeyMismatch:
        # the registry can never accept this key: remove it, if it is still the file made here
        if new_key is not None:
            new_key.remove_if_unchanged()
        raise
    reg.close()
    return RegistryInfo(url, header["registry_id"], header["scheme_version"], str(key_path),
                        header["key_fingerprint"], created, new_key is not None)


# ---------------------------------------------------------------------------------------
# issue
# ---------------------------------------------------------------------------------------
def _make_staging(staging: Path) -> None:
    """Create this issue's staging folder; another issuer may remove the empty shared parent meanwhile."""
    for attempt in range(100):
        try:
            staging.mkdir(parents=True, exist_ok=False)
            return
        except FileNotFoundError:  # the parent was created, then removed by a finishing issuer: retry
            if attempt == 99:
                raise


def _place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished copy into place; without ``overwrite`` never replace a file that appeared meanwhile."""
    if overwrite:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise WeightprintError(f"output {out} already exists", hint="choose another --out or remove it") from None
    except OSError:  # no hard links on this file system
        if out.exists():
            raise WeightprintError(f"output {out} already exists", hint="choose another --out or remove it") from None
        os.replace(tmp, out)


def _issued_before(source, recipient: str, ft: FileType, out: Path, delta: float, registry_url: str,
                   key_file) -> IssueResult | None:
    """The copy already issued to ``recipient`` at ``out`` from ``source`` (same type and delta), if any.

    Opening the registry reconciles the rows of issuers that were killed, so rerunning a killed
    ``mark issue`` reports the copy it placed instead of refusing the existing output.
    """
    t0 = time.perf_counter()
    try:
        master = load_key_file(key_file)
        with open_registry(registry_url) as reg:
            reg.check_key(master)
            rec = reg.issued_at(out, recipient, ft.name)
    except RegistryError:
        return None  # the caller reports the existing output; the registry's own error comes with a new --out
    if rec is None or rec.delta != delta or rec.scheme_version != SCHEME_VERSION:
        return None
    if rec.source_sha256 != model_sha256(source):
        return None
    return IssueResult(rec.issue_id, rec.recipient, str(out), rec.output_sha256, str(source), rec.source_sha256,
                       rec.file_type, rec.scheme_version, rec.delta, rec.n_marked_tensors or 0,
                       rec.n_marked_weights or 0, time.perf_counter() - t0)


def issue_copy(
    source: str | Path,
    recipient: str,
    file_type: FileType | str,
    out: str | Path,
    *,
    registry_url: str = DEFAULT_REGISTRY_URL,
    key_file: str | Path | None = None,
    delta: float = DEFAULT_DELTA,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> IssueResult:
    """Write ``recipient``'s watermarked copy of ``source`` as a GGUF of ``file_type``; record it.

    The mark is embedded inside quantization (see :mod:`weightprint.mark.scheme`). The file is
    built in a staging folder next to ``out``; the registry row is committed as pending, the
    file moved into place (never replacing a file unless ``overwrite``), then the row marked
    issued. A crash leaves no partial file at ``out``; the next run reconciles a killed issuer's
    pending row (file in place -> issued, else removed) and removes its staging folder, and
    rerunning the killed command reports the copy it placed.

    Parameters
    ----------
    source : str or Path
        The original model (GGUF, safetensors file or HF directory).
    recipient : str
        Who receives the copy (unique per source and file type).
    file_type : FileType or str
        ``Q4_K_M``, ``Q8_0``, ``F16``...
    out : str or Path
        Output GGUF path; must not exist unless ``overwrite``.
    registry_url, key_file :
        The registry and its master key file.
    delta : float, *optional*
        Width of the steered band around each rounding boundary, in quantization steps
        (``DEFAULT_DELTA``): about a fraction ``delta`` of the weights change level.

    Raises
    ------
    RegistryError, WeightprintError
        Missing/mismatched key, duplicate recipient, unreadable source, existing output.
    """
    t0 = time.perf_counter()
    recipient = _validate_recipient(recipient)
    ft = parse_file_type(file_type) if isinstance(file_type, str) else FileType(file_type)
    if not (0.0 < float(delta) < 0.5) or not math.isfinite(float(delta)):
        raise WeightprintError(f"mark strength delta = {delta} is outside (0, 0.5)")
    out = Path(out)
    if out.exists() and not overwrite:
        again = _issued_before(source, recipient, ft, out, float(delta), registry_url, key_file)
        if again is not None:  # a rerun after a kill (reconciled) or a repeated command: the same copy
            return again
        raise WeightprintError(f"output {out} already exists", hint="choose another --out or remove it")
    if not out.parent.is_dir():
        raise WeightprintError(f"output directory {out.parent} does not exist")
    master = load_key_file(key_file)
    with open_registry(registry_url) as reg:
        reg.check_key(master)
        source_sha = model_sha256(source)
        prior = reg.find_copy(recipient, source_sha, ft.name)
        if prior is not None:
            raise RegistryError(
                f"recipient `{recipient}` already holds a {ft.name} copy of source {source_sha[:12]} "
                f"(issue {prior.issue_id})"
            )
        issue_id = str(uuid.uuid4())
        salt = new_salt()
        key = master.derive(salt, issue_id)
        code_key = master.code_key()
        counts = {"tensors": 0, "weights": 0}

        def transform(name, values, qtype):
            if is_marked_tensor(name, tuple(values.shape)):
                counts["tensors"] += 1
                counts["weights"] += int(values.size)
            return embed_tensor(name, values, qtype, key, code_key, delta=delta)

        _clean_stale_staging(out.parent)
        staging = out.parent / STAGING_DIR / f"{os.getpid()}-{issue_id}"
        _make_staging(staging)
        placed: list[bool] = []
        try:
            from weightprint.convert import convert

            tmp = staging / out.name
            convert(source, tmp, to="gguf", file_type=ft, tensor_transform=transform, progress=progress)
            out_sha = file_sha256(tmp)
            record = CopyRecord(
                issue_id=issue_id, recipient=recipient, issued_at=datetime.now(timezone.utc),
                source_sha256=source_sha, source_path=str(Path(source).resolve()),
                output_sha256=out_sha, output_path=str(out.resolve()), file_type=ft.name,
                scheme_version=SCHEME_VERSION, delta=float(delta), key_salt=salt.hex(),
                n_marked_tensors=counts["tensors"], n_marked_weights=counts["weights"],
            )

            def place() -> None:
                _place(tmp, out, overwrite)
                placed.append(True)

            reg.record_copy(record, before_commit=place)
        except BaseException:
            if placed and not reg.find_output(out_sha):
                out.unlink(missing_ok=True)  # renamed into place, but the commit failed
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            try:
                staging.parent.rmdir()
            except OSError:
                pass
    return IssueResult(issue_id, recipient, str(out), out_sha, str(source), source_sha, ft.name,
                       SCHEME_VERSION, float(delta), counts["tensors"], counts["weights"],
                       time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------
# trace
# ---------------------------------------------------------------------------------------
def trace_leak(
    leaked: str | Path,
    *,
    source: str | Path,
    registry_url: str = DEFAULT_REGISTRY_URL,
    key_file: str | Path | None = None,
    alpha: float = DEFAULT_ALPHA,
    undo_permutations: bool = True,
    recover_basis: bool = True,
    progress: ProgressCallback | None = None,
) -> TraceVerdict:
    """Test a leaked model against every copy of ``source`` in the registry.

    For each copy, H0: the leak was not produced from this copy. The test statistic and its
    p-value are described in :mod:`weightprint.mark.scheme`; a copy is accused when its
    p-value times the number of copies tested (Bonferroni) is below ``alpha``, which bounds the
    probability of accusing any innocent recipient by ``alpha``.

    Parameters
    ----------
    leaked : str or Path
        The leak: GGUF of any type, safetensors file or Hugging Face directory.
    source : str or Path
        The original the copies were issued from (checked by sha256 against the registry).
    alpha : float, *optional*, defaults to 1e-9
        Family-wise false-accusation level.
    recover_basis : bool, *optional*, defaults to True
        Map the leak back into the original's residual basis first (sign flips, permutations,
        rotations with folded norms; :mod:`weightprint.basis`; uses no key).

    Raises
    ------
    RegistryError
        No key file, wrong key, or no copy of this source in the registry.
    NotComparableError
        The leak shares no weight matrix with the source.
    """
    if not (0.0 < alpha < 1.0):
        raise WeightprintError(f"alpha = {alpha} is outside (0, 1)")
    master = load_key_file(key_file)
    with open_registry(registry_url) as reg:
        reg.check_key(master)
        source_sha = model_sha256(source)
        records = reg.copies(source_sha256=source_sha)
        if not records:
            n_all = len(reg.copies())
            raise RegistryError(
                f"registry {_redact(registry_url)} has no copy issued from source {source} "
                f"(sha256 {source_sha[:12]}; {n_all} copies of other sources)"
            )
    other = sorted({r.scheme_version for r in records} - {SCHEME_VERSION})
    if other:
        raise RegistryError(
            f"registry {_redact(registry_url)} holds copies of source {source} marked with scheme "
            f"{', '.join(other)}; this version of weightprint traces {SCHEME_VERSION} only"
        )
    copies = [CopyTest(r.issue_id, r.recipient, r.file_type, master.derive(bytes.fromhex(r.key_salt), r.issue_id),
                       float(r.delta))
              for r in records]
    t0 = time.perf_counter()
    with _open_model(source) as original, _open_model(leaked) as leak:
        stats = correlate_leak(original, leak, copies, code_key=master.code_key(), undo_permutations=undo_permutations,
                               recover_basis=recover_basis, progress=progress)
    log_alpha = math.log10(alpha)
    tests = []
    for cp, res in zip(copies, stats.tests):
        corrected = res.evidence["log10_pvalue_bonferroni"]
        tests.append(RecipientTest(cp.issue_id, cp.recipient, cp.file_type, res, corrected, corrected < log_alpha))
    accused = sorted((t for t in tests if t.accused), key=lambda t: t.result.log10_pvalue)
    return TraceVerdict(str(leaked), str(source), source_sha, alpha, len(copies), tests, accused,
                        stats.alignment.to_dict(), stats.n_weights, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------
def verify_file(
    path: str | Path,
    *,
    registry_url: str = DEFAULT_REGISTRY_URL,
    key_file: str | Path | None = None,
    source: str | Path | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> VerifyResult:
    """Check a file against the registry: by sha256 first (an exact issued copy), then by mark.

    The watermark check needs the original: ``source``, or else the source path recorded at
    issue time when that file still exists with the recorded sha256.

    Raises
    ------
    RegistryError
        Registry or key problems, or no usable source for the watermark check.
    """
    p = Path(path)
    if not p.exists():
        raise WeightprintError(f"file {p} not found")
    sha = model_sha256(p)
    with open_registry(registry_url) as reg:
        record = reg.find_output(sha)
        records = reg.copies()
    if record is not None:
        return VerifyResult(str(p), sha, "exact", record=record, note="sha256 equals an issued copy")
    if source is None:
        candidates = []
        seen = set()
        for r in records:
            if r.source_sha256 in seen:
                continue
            seen.add(r.source_sha256)
            sp = Path(r.source_path)
            if sp.exists():
                candidates.append((sp, r.source_sha256))
        if not candidates:
            raise RegistryError(f"{p} is no exact issued copy, and no recorded source file exists for a watermark check",
                                hint="pass the original with --source")
    else:
        candidates = [(Path(source), None)]
    last_error: Exception | None = None
    for sp, expected_sha in candidates:
        try:
            verdict = trace_leak(p, source=sp, registry_url=registry_url, key_file=key_file, alpha=alpha)
        except NotComparableError as e:
            last_error = e
            continue
        except RegistryError as e:
            if expected_sha is None:
                raise
            last_error = e  # recorded source file changed since issue
            continue
        match = "watermark" if verdict.accused else "none"
        return VerifyResult(str(p), sha, match, trace=verdict, note=verdict.summary())
    return VerifyResult(str(p), sha, "none", note=f"no registered source is comparable: {last_error}")
