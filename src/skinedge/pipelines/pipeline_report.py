"""``OUT/report.html``: a pipeline run as one page a person reads, on a laptop or a phone.

One self-contained file: styles inline, images as data URLs, charts as inline SVG; it loads
nothing from anywhere (no CDN, no script), so it can be mailed or archived with the model.
Sections, in order: summary and gate verdict, stages and their wall times, data and split
check, learning curves, GAN samples, losses and per-class quality, the synthetic-image
selection ledger, the ablation (members with and without synthetic images), evaluation with
confusion matrices, Grad-CAM examples, compression, the bench table and chart, the gate, the
model card and the data licence. Everything is read from the stages' ``stage.json`` and the
files they wrote; nothing is computed here but the split check.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence, Set
from pathlib import Path
from typing import Any

from skinedge.pipelines.pipeline_config import PipelineConfig, data_folders
from skinedge.utils.io import atomic_write_text

#: Section ids and titles, in page order (the report test checks each one rendered).
SECTIONS = {
    "summary": "Summary", "stages": "Stages", "data": "Data and split",
    "curves": "Learning curves", "gan": "GAN", "selection": "Synthetic-image selection",
    "ablation": "Ablation: members with and without synthetic images",
    "evaluation": "Evaluation", "gradcam": "Grad-CAM examples", "compression": "Compression",
    "bench": "Bench", "gate": "Gate", "card": "Model card", "licence": "Data licence",
}
#: What a section that could not be drawn starts with (the report test looks for it).
RENDER_FAILED = "This section could not be drawn"
#: Okabe-Ito colours: told apart with any colour vision.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1100px;padding:12px;color:#1b1b1b;background:#fff;overflow-wrap:anywhere}
h1{font-size:1.4em;margin:.3em 0}h2{font-size:1.15em;margin:1.6em 0 .5em;
border-bottom:2px solid #0072B2;padding-bottom:.2em}h3{font-size:1em;margin:1em 0 .3em}
nav{font-size:.9em;line-height:1.9}nav a{margin-right:.8em;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:.9em;
margin:.4em 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums}table.kv td{white-space:normal}th{background:#f0f4f8}
img,svg{max-width:100%;height:auto}.figs{display:flex;flex-wrap:wrap;gap:10px}
.figs figure{margin:0;flex:1 1 300px;min-width:0}figcaption{font-size:.85em;color:#444}
.pass{color:#fff;background:#007a3d;padding:2px 8px;border-radius:4px}
.fail{color:#fff;background:#b3261e;padding:2px 8px;border-radius:4px}
.none{background:#ddd;padding:2px 8px;border-radius:4px}.note{color:#444;font-size:.9em}
pre{white-space:pre-wrap;background:#f6f6f6;padding:8px;font-size:.85em}
"""


def write_html_report(out: Path, report: dict[str, Any], docs: dict[str, dict[str, Any]],
                      cfg: PipelineConfig) -> Path:
    """Write ``out/report.html`` for one run.

    Args:
        out: The run folder.
        report: What ``pipeline.json`` holds (stages, gate, failures, versions).
        docs: Each stage's ``stage.json``, by stage name.
        cfg: The run's resolved config.
    """
    page = _Page(out, report, docs, cfg)
    body = "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{_rendered(render)}'
                   "</section>" for key, title, render in page.sections())
    nav = " ".join(f'<a href="#{key}">{html.escape(title.split(":")[0])}</a>'
                   for key, title in SECTIONS.items())
    doc = ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
           '<meta name="viewport" content="width=device-width,initial-scale=1">'
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
           "img-src data:; style-src 'unsafe-inline'\">"
           f"<title>skinedge pipeline {html.escape(out.name)}</title><style>{CSS}</style>"
           f"</head><body><h1>skinedge pipeline run: {html.escape(str(out))}</h1>"
           f"<nav>{nav}</nav>{body}</body></html>\n")
    path = out / "report.html"
    atomic_write_text(path, doc)
    return path


class _Page:
    """The sections of one report; each ``_section`` method returns its HTML."""

    def __init__(self, out: Path, report: dict[str, Any], docs: dict[str, dict[str, Any]],
                 cfg: PipelineConfig):
        self.out, self.report, self.docs, self.cfg = out, report, docs, cfg
        self.manifest = json.loads(Path(docs["split"]["manifest"]).read_text())
        self.evaluation = docs.get("evaluate", {})
        bench_json = docs["bench"].get("files", {}).get("json")
        self.bench = json.loads(Path(bench_json).read_text()) if bench_json else {}
        self.final = Path(self._final_checkpoint())
        self.card = json.loads((self.final / "card.json").read_text())
        self.classes: list[str] = self.card["classes"]

    def sections(self) -> Iterable[tuple[str, str, Any]]:
        for key, title in SECTIONS.items():
            yield key, title, getattr(self, f"_{key}")

    # ----------------------------------------------------------------------- sections

    def _summary(self) -> str:
        gate = self.report.get("gate")
        verdict = ('<span class="none">no gate</span>' if gate is None else
                   '<span class="pass">gate passed</span>' if gate["passed"] and not
                   self.report["failures"] else '<span class="fail">failed</span>')
        versions = self.report.get("versions", {})
        rows = [["verdict", verdict], ["command", _code(self.report["command"])],
                ["started", _e(self.report["started"])],
                ["finished", _e(self.report["finished"])],
                ["data", _e(", ".join(map(str, data_folders(self.cfg))))],
                ["final model", _e(self._final_name())],
                ["machine", _e(self.bench.get("cpu_summary", "not benched"))],
                ["versions", _e(", ".join(f"{k} {v}" for k, v in versions.items()
                                          if k in ("skinedge", "python", "torch", "timm",
                                                   "onnxruntime", "openvino", "nncf")))]]
        problems = "".join(f"<li>{_e(name)}: {_e(reason)}</li>"
                           for name, reason in self.report["failures"].items())
        return (_table(["", ""], rows, raw=True, show_header=False)
                + (f"<h3>Failures</h3><ul>{problems}</ul>" if problems else ""))

    def _stages(self) -> str:
        rows = [[r["name"], r["key"][:16], r["status"], _num(r["seconds"], ".1f"),
                 _num(r["this_run_seconds"], ".1f")] for r in self.report["stages"]]
        total = sum(r["seconds"] or 0 for r in self.report["stages"])
        return (_table(["stage", "key", "this run", "stage wall time (s)",
                        "this run's time (s)"], rows, numeric={3, 4})
                + f'<p class="note">Stage wall times add up to {total / 60:.1f} min; a cached '
                  "stage shows the time it took when it ran.</p>")

    def _data(self) -> str:
        m = self.manifest
        splits = ["train", "val", "test"]
        counts = {s: Counter(r["label"] for r in m["rows"] if r["split"] == s) for s in splits}
        # Partial labels of a multi-source split (ISIC 2020's benign: 'not-mel') get rows too.
        labels = [*self.classes, *sorted({r["label"] for r in m["rows"]} - set(self.classes))]
        rows = [[c, *(counts[s][c] for s in splits), sum(counts[s][c] for s in splits)]
                for c in labels]
        rows.append(["all", *(sum(counts[s].values()) for s in splits), len(m["rows"])])
        split_of: dict[str, set[str]] = defaultdict(set)
        for r in m["rows"]:
            split_of[r["group"]].add(r["split"])
        shared = sorted(g for g, s in split_of.items() if len(s) > 1)
        check = (f'<p><span class="pass">split check passed</span> {len(split_of)} lesions '
                 "(groups), none in two splits.</p>" if not shared else
                 f'<p><span class="fail">split check failed</span> {len(shared)} lesions in '
                 f"more than one split: {_e(', '.join(shared[:20]))}</p>")
        notes = [*m.get("class_warnings", []),
                 *([f"{m['ungrouped_rows']} rows without a lesion or patient id (each its own "
                    "group)"] if m.get("ungrouped_rows") else []),
                 *([f"{len(m['duplicate_files'])} duplicate files kept in one split"]
                   if m.get("duplicate_files") else [])]
        skipped = self.docs["split"].get("skipped")
        if skipped:
            notes.append(f"rows left out (split.skip_bad): listed in {skipped}")
        return (f"<p>{_e(m['root'])} ({_e(m['layout'])}), split by lesion with seed "
                f"{m['seed']}, ratios {_e(m['ratios'])}; split hash "
                f"<code>{_e(m['split_hash'][:16])}</code>.</p>" + check
                + _table(["class", *splits, "all"], rows, numeric={1, 2, 3, 4})
                + self._sources(m, splits)
                + "".join(f'<p class="note">{_e(n)}</p>' for n in notes))

    @staticmethod
    def _sources(m: dict, splits: list[str]) -> str:
        """Images per source and split, for a split of several folders."""
        per_source = m.get("source_counts") or {}
        if not per_source:
            return ""
        rows = [[name, *(n.get(s, 0) for s in splits), sum(n.values())]
                for name, n in per_source.items()]
        return ("<p>Several sources, each split on its own; every evaluation below also "
                "scores each source alone (<code>skinedge evaluate</code>'s per-source "
                "table).</p>" + _table(["source", *splits, "all"], rows, numeric={1, 2, 3, 4}))

    def _curves(self) -> str:
        runs = {name: doc["history"] for name, doc in self.docs.items()
                if doc.get("history")}
        if not runs:
            return "<p>No training stage.</p>"
        metric = {n: [(h["epoch"], h.get("balanced_accuracy")) for h in hist]
                  for n, hist in runs.items()}
        val = {n: [(h["epoch"], h.get("val_loss")) for h in hist] for n, hist in runs.items()}
        train = {n: [(h["epoch"], h.get("train_loss")) for h in hist] for n, hist in runs.items()}
        best = [[n, d["best_epoch"], _num(d["best_metric"], ".3f"), d["epochs"],
                 "yes" if d.get("stopped_early") else "no"]
                for n, d in self.docs.items() if d.get("history")]
        return ('<div class="figs">'
                + _figure(_svg_lines(metric, "epoch", "val balanced accuracy"),
                          "Validation balanced accuracy per epoch")
                + _figure(_svg_lines(val, "epoch", "val loss"), "Validation loss")
                + _figure(_svg_lines(train, "epoch", "train loss"), "Training loss")
                + "</div>"
                + _table(["model", "best epoch", "best val bal. acc.", "epochs",
                          "stopped early"], best, numeric={1, 2, 3}))

    def _gan(self) -> str:
        if "gan" not in self.docs:
            return "<p>The GAN is off in this config (gan.enabled: false).</p>"
        run = Path(self.docs["gan"]["run"])
        grids = sorted(run.glob("grids/*.png")) + sorted(run.glob("classes/*/grids/*.png"))
        parts = []
        if grids:
            parts.append(_figure(_img(grids[-1], "GAN samples", max_width=900),
                                 f"Samples at the last snapshot ({grids[-1].name}), one row "
                                 "per class"))
        log = run / "metrics.jsonl"
        if log.is_file():
            records = [json.loads(line) for line in log.read_text().splitlines() if line]
            series = {k: [(r["kimg"], r.get(k)) for r in records]
                      for k in ("d_loss", "g_loss") if any(k in r for r in records)}
            parts.append(_figure(_svg_lines(series, "kimg (thousands of real images shown)",
                                            "loss"), "GAN losses"))
        quality = self.docs.get("gan-quality")
        if quality:
            rows = [[r["label"], r["real"], r["fake"], _num(r["fid"], ".1f"),
                     _num(None if r["kid_mean"] is None else r["kid_mean"] * 1e3, ".2f"),
                     _num(r["precision"], ".2f"), _num(r["recall"], ".2f")]
                    for r in quality["rows"]]
            parts.append("<h3>Per-class quality</h3>" + _table(
                ["class", "real", "generated", "FID", "KID x1000", "precision", "recall"],
                rows, numeric={1, 2, 3, 4, 5, 6})
                + f'<p class="note">Against the real train images of each class, on '
                  f"{_e(quality['features'])} features; lower FID and KID, higher precision "
                  "(realism) and recall (coverage) are better. Few real images make FID "
                  "biased upwards: compare classes by KID.</p>")
        else:
            parts.append('<p class="note">Per-class quality not measured '
                         "(report.gan_quality_images: 0).</p>")
        return '<div class="figs">' + "".join(parts[:2]) + "</div>" + "".join(parts[2:])

    def _selection(self) -> str:
        sets = {n: d for n, d in self.docs.items() if n.startswith("synthetic-")}
        if not sets:
            return "<p>No synthetic images in this config.</p>"
        parts = []
        for name, doc in sets.items():
            summary = doc.get("summary") or {}
            if not summary:
                parts.append(f"<h3>{_e(name)}</h3><p>{_e(doc.get('note', 'none kept'))}</p>")
                continue
            reasons = sorted({k for row in summary.values() for k in row}
                             - {"candidates", "kept"})
            rows = [[c, r.get("candidates", 0), r.get("kept", 0), *(r.get(k, 0) for k in reasons)]
                    for c, r in summary.items()]
            parts.append(f"<h3>{_e(name)} (member {name.split('-')[1]}'s set)</h3>" + _table(
                ["class", "candidates", "kept", *(f"refused: {k}" for k in reasons)], rows,
                numeric=set(range(1, len(reasons) + 3))))
        return ("".join(parts) + '<p class="note">Each candidate is kept only if it is not a '
                "near copy of a train image, the discriminator finds it realistic, and member 0 "
                "(trained on real images only) classifies it as its class; kept images fill "
                "each class up to the selection target.</p>")

    def _ablation(self) -> str:
        models = self.evaluation.get("models", {})
        members = {n: m for n, m in models.items() if n.startswith("member-")}
        if not members:
            return "<p>Not evaluated.</p>"
        rare = self._rare_classes()
        rows = []
        for name, m in members.items():
            kept = self._kept(name)
            rows.append([name, "yes" if m["synthetic"] else "no (real images only)",
                         kept, *self._accuracy_cells(m["metrics"]),
                         *(_num(m["metrics"]["per_class"][c]["recall"], ".2f") for c in rare)])
        return (_table(["member", "synthetic images", "kept", "bal. acc.", "95% interval",
                        "mel recall", *(f"{c} recall" for c in rare)], rows,
                       numeric={2, 3, 5, 6, 7, 8})
                + f'<p class="note">On the {_e(self.evaluation["split"])} split. Members '
                  "differ in their training seed as well as their data, so this is a hint, not "
                  "a controlled result; `skinedge experiment ablation` trains the controlled "
                  "arms (no augmentation, classic, GAN unselected, GAN selected, ensembles) on "
                  "one split.</p>")

    def _evaluation(self) -> str:
        models = self.evaluation.get("models", {})
        if not models:
            return "<p>Not evaluated.</p>"
        rows = [[name, m["metrics"]["n"], *self._accuracy_cells(m["metrics"]),
                 _num(m["metrics"].get("melanoma_auc"), ".3f"),
                 _num(m["metrics"].get("macro_auc"), ".3f"), _num(m["metrics"].get("ece"), ".3f")]
                for name, m in models.items()]
        classes = self.classes
        recall = [[name, *(_num(m["metrics"]["per_class"].get(c, {}).get("recall"), ".2f")
                           for c in classes)] for name, m in models.items()]
        shown = [n for n in ("ensemble", "student") if n in models] or list(models)[:1]
        figures = "".join(_figure(_img(Path(models[n]["confusion"]), f"{n} confusion matrix",
                                       max_width=700), f"{n}: rows true, columns predicted, "
                                                       "as fractions of each true class")
                          for n in shown)
        return (f'<p>On the {_e(self.evaluation["split"])} split of the lesion-grouped '
                "manifest (never used for training or model selection).</p>"
                + _table(["model", "images", "bal. acc.", "95% interval", "mel recall",
                          "mel AUC", "macro AUC", "ECE"], rows, numeric={1, 2, 4, 5, 6, 7})
                + "<h3>Recall per class</h3>"
                + _table(["model", *classes], recall, numeric=set(range(1, len(classes) + 1)))
                + self._per_source(models)
                + f'<div class="figs">{figures}</div>'
                + '<p class="note">An own test split flatters: report external sets too '
                  "(`skinedge evaluate --data`).</p>")

    @staticmethod
    def _per_source(models: dict[str, dict]) -> str:
        """Each model on each source of a multi-source split (a melanoma-vs-benign source has
        melanoma figures only)."""
        rows = [[name, source, s.get("n"),
                 "n/a" if s.get("task") == "melanoma-detection" else
                 _num(s.get("balanced_accuracy"), ".3f"),
                 _num(s.get("melanoma_auc"), ".3f"),
                 ", ".join(s.get("classes_absent") or []) or "-"]
                for name, m in models.items()
                for source, s in (m["metrics"].get("per_source") or {}).items()]
        if not rows:
            return ""
        return ("<h3>Per source</h3>" + _table(
            ["model", "source", "images", "bal. acc. (classes present)", "mel AUC",
             "classes absent"], rows, numeric={2, 3, 4})
            + '<p class="note">A source labelled only melanoma vs benign has no balanced '
              "accuracy; its melanoma AUC counts its benign lesions as non-melanomas.</p>")

    def _gradcam(self) -> str:
        images = self.evaluation.get("gradcam", [])
        if not images:
            return "<p>No Grad-CAM examples (report.gradcam_images: 0).</p>"
        return ('<div class="figs">' + "".join(
            _figure(_img(Path(p), "Grad-CAM", max_width=700), Path(p).stem) for p in images)
            + "</div>" + '<p class="note">The final model on one test image per class: the '
                         "image and the regions that drove its top class.</p>")

    def _compression(self) -> str:
        models = self.evaluation.get("models", {})
        rows = [[name, _num(m["params"] / 1e6, ".2f"), _num(m["macs"] / 1e6, ".0f"),
                 *self._accuracy_cells(m["metrics"])[:1]] for name, m in models.items()]
        artifacts = [[r["label"], _num(r.get("size_mb"), ".1f"), _num(r.get("p50_ms"), ".2f"),
                      _num(r.get("balanced_accuracy"), ".3f"), _num(r.get("flip_rate"), ".3f")]
                     for r in self.bench.get("rows", [])]
        return (_table(["model", "parameters (M)", "MACs per image (M)", "bal. acc."], rows,
                       numeric={1, 2, 3})
                + "<h3>The final model's artifacts</h3>"
                + _table(["artifact", "size (MB)", "p50 (ms)", "bal. acc.", "top-1 flips"],
                         artifacts, numeric={1, 2, 3, 4}))

    def _bench(self) -> str:
        if not self.bench:
            return "<p>Not benched.</p>"
        rows = [[r["label"], r["status"], r.get("backend") or "", r.get("threads") or "",
                 _num(r.get("p50_ms"), ".2f"), _num(r.get("p95_ms"), ".2f"),
                 _num(r.get("size_mb"), ".1f"), _num(r.get("peak_rss_mb"), ".0f"),
                 _num(r.get("balanced_accuracy"), ".3f"), _num(r.get("flip_rate"), ".3f")]
                for r in self.bench["rows"]]
        chart = self.docs["bench"].get("files", {}).get("chart")
        settings = self.bench.get("settings", {})
        test = self.bench.get("test", {})
        return (f"<p>Machine: {_e(self.bench.get('cpu_summary'))}. "
                f"{_e(test.get('images', ''))} images of {_e(test.get('source', 'the split'))}; "
                f"{_e(settings.get('iterations'))} timed runs after "
                f"{_e(settings.get('warmup'))} warm-up, batch 1.</p>"
                + _table(["artifact", "status", "backend", "threads", "p50 (ms)", "p95 (ms)",
                          "size (MB)", "peak RSS (MB)", "bal. acc.", "top-1 flips"], rows,
                         numeric={3, 4, 5, 6, 7, 8, 9})
                + (_figure(_img(Path(chart), "latency against accuracy", max_width=900),
                           "Latency against balanced accuracy") if chart else "")
                + "".join(f'<p class="note">{_e(n)}</p>' for n in self.bench.get("notes", [])))

    def _gate(self) -> str:
        gate = self.report.get("gate")
        failures = self.report["failures"]
        if gate is None:
            text = "<p>No gate in this config (bench.gate): measured, not judged.</p>"
        else:
            failed = "".join(f"<li>{_e(f)}</li>" for f in gate["failed"])
            text = (f'<p><span class="{"pass" if gate["passed"] else "fail"}">'
                    f'{"passed" if gate["passed"] else "failed"}</span> '
                    f"{gate['checks'] - len(gate['failed'])} of {gate['checks']} checks passed "
                    f"({_e(self.cfg.bench.gate)}).</p>" + (f"<ul>{failed}</ul>" if failed else ""))
        if failures:
            text += "<h3>Artifacts not made or not measured</h3><ul>" + "".join(
                f"<li>{_e(n)}: {_e(r)}</li>" for n, r in failures.items()) + "</ul>"
        return text

    def _card(self) -> str:
        final, card = self.final, self.card
        names = card.get("class_names") or {}
        pre = card.get("preprocess", {})
        metrics = card.get("metrics") or {}
        rows = [["architecture", _e(card.get("architecture"))],
                ["classes", _e(", ".join(f"{c} ({names.get(c, c)})" for c in card["classes"]))],
                ["input", _e(f"{pre.get('input_size')} px, {pre.get('resize_mode')}, "
                             f"{pre.get('interpolation')}, mean {pre.get('mean')}, "
                             f"std {pre.get('std')}")],
                ["precision", _e(card.get("precision"))],
                ["validation", _e(f"balanced accuracy {metrics.get('balanced_accuracy')} on "
                                  f"{metrics.get('n')} {metrics.get('split')} images")],
                ["intended use", _e(card.get("intended_use"))],
                ["weights sha256", _code(card.get("weights_sha256", ""))],
                ["created", _e(card.get("created"))], ["checkpoint", _e(final)]]
        return (_table(["", ""], rows, raw=True, show_header=False)
                + '<p class="note">Every exported artifact carries this card.</p>')

    def _licence(self) -> str:
        from skinedge.train.outputs import detect_licence

        root = Path(self.manifest["root"])
        # A multi-source split's root is the folders' parent: each source has its own terms.
        folders = [root / s["name"] for s in self.manifest.get("sources") or []] or [root]
        parts = []
        for folder in folders:
            readme = next((folder / n for n in ("README.md", "README.txt", "README")
                           if (folder / n).is_file()), None)
            text = _licence_section(readme.read_text(errors="replace")) if readme else ""
            parts.append(f"<p>Licence of {_e(folder)}: <strong>{_e(detect_licence(folder))}"
                         "</strong>.</p>"
                         + (f"<pre>{_e(text)}</pre>" if text else
                            '<p class="note">No README with a licence section in this data '
                            "folder.</p>"))
        return ("".join(parts) + "<p>Models trained on the data inherit its terms of use; the "
                "report and the model card say so.</p>")

    # ----------------------------------------------------------------------- helpers

    def _final_name(self) -> str:
        return ("student (distilled)" if self.cfg.distill.enabled else
                "ensemble" if self.cfg.members.count > 1 else "member-0")

    def _final_checkpoint(self) -> str:
        name = ("distill" if self.cfg.distill.enabled else
                "ensemble" if self.cfg.members.count > 1 else "member-0")
        return self.docs[name]["checkpoint"]

    def _kept(self, member: str) -> int | str:
        doc = self.docs.get(f"synthetic-{member.split('-')[1]}")
        if not doc:
            return 0
        return sum(row.get("kept", 0) for row in (doc.get("summary") or {}).values())

    def _rare_classes(self) -> list[str]:
        """The three classes with the fewest train images."""
        train = Counter(r["label"] for r in self.manifest["rows"] if r["split"] == "train")
        return sorted(self.classes, key=lambda c: train[c])[:3]

    @staticmethod
    def _accuracy_cells(metrics: dict[str, Any]) -> list[str]:
        interval = (metrics.get("confidence_intervals") or {}).get("balanced_accuracy")
        mel = (metrics.get("per_class") or {}).get("mel", {}).get("recall")
        return [_num(metrics["balanced_accuracy"], ".3f"),
                f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "",
                _num(mel, ".2f")]


def _rendered(render) -> str:
    """A section's HTML; a section that cannot be drawn (a stage's file deleted by hand) says
    why in its place instead of costing the run its report."""
    try:
        return render()
    except (OSError, KeyError, ValueError, TypeError) as exc:
        return (f'<p class="fail">{RENDER_FAILED}: {_e(type(exc).__name__)}: {_e(exc)}</p>')


def _licence_section(readme: str) -> str:
    """The README's section whose heading names a licence, or its lines that do."""
    lines = readme.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#") and "licen" in line.lower():
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("#")),
                       len(lines))
            return "\n".join(lines[i:end]).strip()
    return "\n".join(line for line in lines if "licen" in line.lower()).strip()


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _code(value: Any) -> str:
    return f"<code>{_e(value)}</code>"


def _num(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], *,
           numeric: Set[int] = frozenset(), raw: bool = False, show_header: bool = True) -> str:
    """A table in a horizontally scrolling box (wide tables never widen a phone's page).
    Cells are escaped unless ``raw``; ``numeric`` columns are right-aligned."""
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if show_header else ""
    body = "".join("<tr>" + "".join(
        f'<td{" class=n" if i in numeric else ""}>{c if raw else _e(c)}</td>'
        for i, c in enumerate(row)) + "</tr>" for row in rows)
    kind = "" if show_header else ' class="kv"'  # key-value rows wrap their long values
    return f'<div class="scroll"><table{kind}>{head}{body}</table></div>'


def _figure(content: str, caption: str) -> str:
    return f"<figure>{content}<figcaption>{_e(caption)}</figcaption></figure>"


def _img(path: Path, alt: str, *, max_width: int = 1000) -> str:
    """``path`` inline as a PNG data URL, shrunk to ``max_width`` pixels at most."""
    from PIL import Image

    if not path.is_file():
        return f'<p class="note">missing: {_e(path)}</p>'
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)),
                                 Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _svg_lines(series: dict[str, list[tuple[float, float | None]]], xlabel: str,
               ylabel: str, *, width: int = 480, height: int = 260) -> str:
    """A line chart as inline SVG: one polyline per series, axes with their ranges."""
    points = {n: [(x, y) for x, y in s if y is not None] for n, s in series.items()}
    points = {n: p for n, p in points.items() if p}
    if not points:
        return '<p class="note">no values</p>'
    xs = [x for p in points.values() for x, _ in p]
    ys = [y for p in points.values() for _, y in p]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    left, right, top, bottom = 52, 10, 10, 40 + 16 * ((len(points) + 2) // 3)
    w, h = width - left - right, height - top - 40

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * h

    full = height + bottom - 40
    parts = [f'<svg viewBox="0 0 {width} {full}" width="{width}" role="img" '
             f'aria-label="{_e(ylabel)} against {_e(xlabel)}" font-size="11" '
             'font-family="sans-serif">',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for y in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for x in (x0, x1):
        parts.append(f'<text x="{sx(x):.1f}" y="{top + h + 14}" text-anchor="middle">'
                     f"{x:.4g}</text>")
    parts.append(f'<text x="{left + w / 2}" y="{top + h + 28}" text-anchor="middle">'
                 f"{_e(xlabel)}</text>")
    parts.append(f'<text transform="translate(12 {top + h / 2}) rotate(-90)" '
                 f'text-anchor="middle">{_e(ylabel)}</text>')
    for i, (name, p) in enumerate(points.items()):
        colour = PALETTE[i % len(PALETTE)]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in p)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" '
                     'stroke-width="2"/>')
        if len(p) == 1:
            parts.append(f'<circle cx="{sx(p[0][0]):.1f}" cy="{sy(p[0][1]):.1f}" r="3" '
                         f'fill="{colour}"/>')
        lx, ly = left + (i % 3) * (w / 3), top + h + 44 + 16 * (i // 3)
        parts.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="12" height="3" fill="{colour}"/>'
                     f'<text x="{lx + 16:.1f}" y="{ly - 5}">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
