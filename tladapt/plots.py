"""Pictures of what adaptation did: feature t-SNE by domain and by class, the target's (oracle)
confusion matrix, and the TensorBoard custom-scalars layout every run opens on.

* :func:`feature_figure`: t-SNE (scikit-learn; van der Maaten & Hinton, JMLR 2008) of
  backbone features of source and target samples, two panels: coloured by domain, and by
  class (source dots, target crosses). Aligned features show the two domains mixed and the
  classes in clusters shared by both.
* :func:`confusion_figure`: the target confusion matrix, rows normalised to the true class.
  It reads target labels, so it is titled and tagged as the oracle.
* :func:`write_plots`: both as PNG in the run directory and as TensorBoard images, plus the
  features in TensorBoard's embedding projector (``add_embedding``), for one stage
  (``start`` / ``end`` of training). ``trainer.plots = true`` writes them during a run;
  ``tladapt plot RUN_DIR`` writes the ``end`` ones after the fact from the checkpoint.
* :func:`scalars_layout`: the custom-scalars layout (accuracy and validators, losses, then
  schedules) written into every run.

Everything draws on matplotlib's Agg canvas (no display, no pyplot state) and runs outside
the training step.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from tladapt.data.domain import Domain

#: Samples drawn (seeded) from each domain for a t-SNE plot: t-SNE costs O(n^2).
PLOT_SAMPLES = 500


def scalars_layout() -> dict:
    """The custom-scalars layout of a run (``SummaryWriter.add_custom_scalars``): what
    matters first. Each chart matches tags by regular expression across the selected runs,
    whose names (``<task>/<method>/seed<k>-...``) keep the seeds of one method together.

    * ``accuracy``: target accuracy (oracle) beside source validation accuracy (label-free)
      and the validators' scores.
    * ``losses``: every ``loss/<term>``, and the total.
    * ``schedules``: λ (``train/lambda`` and any ``*/lambda``) and the learning rate.
    """
    return {
        "accuracy": {
            "target accuracy (oracle)": ["Multiline", [r"oracle/target_acc"]],
            "source validation accuracy (label-free)": ["Multiline", [r"metrics/source_val_acc"]],
            "validators (label-free)": ["Multiline", [r"validator/.*"]],
        },
        "losses": {
            "loss terms": ["Multiline", [r"loss/(?!total).*"]],
            "total loss": ["Multiline", [r"loss/total"]],
        },
        "schedules": {
            "lambda": ["Multiline", [r"(train|[^/]+)/lambda"]],
            "learning rate": ["Multiline", [r"train/lr"]],
        },
    }


def _subsample(n: int, k: int, seed: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def embed_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D t-SNE of ``features`` ``(n, d)``: PCA to 50 dimensions first when ``d > 50``
    (as van der Maaten & Hinton advise), perplexity ``min(30, (n - 1) / 3)``, PCA
    initialisation, seeded. Returns ``(n, 2)`` float64.

    Raises:
        ValueError: for fewer than 4 samples.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if len(x) < 4:
        raise ValueError(f"t-SNE needs at least 4 samples, got {len(x)}")
    if x.shape[1] > 50:
        x = PCA(n_components=min(50, len(x)), random_state=seed).fit_transform(x)
    return TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed,
                learning_rate="auto").fit_transform(x)


def _class_colours(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def feature_figure(source: np.ndarray | None, target: np.ndarray, y_source: np.ndarray | None,
                   y_target: np.ndarray | None, classes: tuple[str, ...], title: str, seed: int = 0) -> Figure:
    """Two t-SNE panels of source and target features: by domain, and by class.

    Args:
        source: source features ``(n_s, d)`` or None (source-free runs).
        target: target features ``(n_t, d)``.
        y_source, y_target: class indices ``(n,)`` into ``classes``; None: not shown.
            ``y_target`` are target labels (oracle): they colour points, nothing else.
        classes: class names.
        title: the figure's title.
        seed: seeds the t-SNE.
    """
    from matplotlib.figure import Figure

    parts = [p for p in (source, target) if p is not None]
    xy = embed_2d(np.concatenate(parts), seed)
    n_s = 0 if source is None else len(source)
    s, t = xy[:n_s], xy[n_s:]
    fig = Figure(figsize=(11, 5), dpi=100, layout="constrained")
    by_domain, by_class = fig.subplots(1, 2)
    if n_s:
        by_domain.scatter(s[:, 0], s[:, 1], s=8, c="tab:blue", alpha=0.6, label=f"source ({n_s})")
    by_domain.scatter(t[:, 0], t[:, 1], s=8, c="tab:orange", alpha=0.6, label=f"target ({len(t)})")

    by_domain.legend(loc="best", fontsize=8)
    colours = _class_colours(len(classes))
    for points, labels, marker, domain in ((s, y_source, "o", "source"), (t, y_target, "x", "target")):
        if len(points) and labels is not None:
            by_class.scatter(points[:, 0], points[:, 1], s=10 if marker == "o" else 14, marker=marker,
                             c=[colours[i] for i in labels], alpha=0.7, linewidths=0.8)
    handles = [by_class.scatter([], [], s=20, color=colours[i], label=name) for i, name in enumerate(classes)]
    by_class.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    by_class.set_title("by class (source o, target x; target classes: oracle)", fontsize=10)
    by_domain.set_title("by domain", fontsize=10)
    for ax in (by_domain, by_class):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return fig


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...], title: str) -> Figure:
    """The confusion matrix of target predictions, each row normalised to its true class
    (so the diagonal is per-class recall, in percent); the cells hold the percentages.
    Reads target labels: it is an oracle picture, and says so in its title."""
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    k = len(classes)
    counts = confusion_matrix(y_true, y_pred, labels=np.arange(k))
    rows = counts.sum(1, keepdims=True)
    share = 100.0 * counts / np.maximum(rows, 1)
    side = max(4.5, 0.45 * k + 2)
    fig = Figure(figsize=(side + 1, side), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of the true class")
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (target labels: oracle)")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, f"{share[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 60 else "black")
    accuracy = 100.0 * np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{title}\ntarget confusion matrix (oracle), accuracy {accuracy:.1f}%", fontsize=10)
    return fig


def figure_png(fig: Figure) -> tuple[bytes, np.ndarray]:
    """``fig`` rendered: its PNG bytes and its ``(H, W, 3)`` uint8 RGB pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return buffer.getvalue(), pixels


def _features(backbone, domain: Domain, index: np.ndarray) -> torch.Tensor:
    import torch

    with torch.no_grad():
        return domain.subset(torch.as_tensor(index, device=domain.x.device)).map(backbone).float().cpu()


def _metadata(domain: str, labels: np.ndarray | None, n: int, classes: tuple[str, ...]) -> list[list[str]]:
    return [[domain, "?" if labels is None else classes[i]] for i in (labels if labels is not None else range(n))]


def write_plots(writer, run_dir: str | Path, backbone, head, source: Domain | None, target: Domain,
                target_labels: torch.Tensor | None, stage: str, step: int, seed: int = 0, title: str = "") -> list[Path]:
    """Feature t-SNE (and at the ``end`` stage the oracle confusion matrix) for one run.

    Writes ``features_<stage>.png`` (and ``confusion_target_oracle.png``) into ``run_dir``
    atomically, the same pictures as TensorBoard images (``plots/features_<stage>``,
    ``oracle/confusion_matrix``) and the sampled features to the embedding projector
    (tag ``features_<stage>``, metadata domain and class) at ``step``.

    Args:
        writer: the run's ``SummaryWriter``.
        run_dir: the run directory.
        backbone, head: the model, in eval mode (set by the caller).
        source: the source samples (training split), or None in a source-free run.
        target: the unlabelled target samples; ``target_labels`` ``(n_t,)`` their labels
            (oracle, for colours and the confusion matrix only), or None.
        stage: ``"start"`` or ``"end"``.
        step: the TensorBoard step.
        seed: seeds the subsamples and the t-SNE.
        title: the figures' title, e.g. ``"amazon->webcam dann seed 0, step 1000"``.

    Returns:
        The PNG files written.
    """
    import torch

    from tladapt.runs import atomic_write_bytes

    run_dir = Path(run_dir)
    classes = target.classes
    it = _subsample(len(target), PLOT_SAMPLES, seed)
    ft = _features(backbone, target, it)
    yt = None if target_labels is None else target_labels.cpu().numpy()[it]
    fs = ys = None
    if source is not None:
        is_ = _subsample(len(source), PLOT_SAMPLES, seed + 1)
        fs = _features(backbone, source, is_)
        ys = None if source.y is None else source.y.cpu().numpy()[is_]
        if ys is not None and source.classes != classes:  # a different target task: class names of its own
            classes = tuple(dict.fromkeys(source.classes + classes))
            ys = np.array([classes.index(source.classes[i]) for i in ys])
            yt = None if yt is None else np.array([classes.index(target.classes[i]) for i in yt])
    written = []
    fig = feature_figure(None if fs is None else fs.numpy(), ft.numpy(), ys, yt, classes,
                         f"{title} ({stage} of training): t-SNE of backbone features", seed)
    png, pixels = figure_png(fig)
    path = run_dir / f"features_{stage}.png"
    atomic_write_bytes(path, lambda f: f.write(png))
    written.append(path)
    writer.add_image(f"plots/features_{stage}", pixels, step, dataformats="HWC")
    both = ft if fs is None else torch.cat([fs, ft])
    meta = _metadata("source", ys, 0 if fs is None else len(fs), classes) + _metadata("target", yt, len(ft), classes)
    writer.add_embedding(both, metadata=meta, metadata_header=["domain", "class (target: oracle)"],
                         tag=f"features_{stage}", global_step=step)
    if stage == "end" and target_labels is not None:
        with torch.no_grad():
            predicted = target.map(lambda x: head(backbone(x)).argmax(1)).cpu().numpy()
        fig = confusion_figure(target_labels.cpu().numpy(), predicted, target.classes, title)
        png, pixels = figure_png(fig)
        path = run_dir / "confusion_target_oracle.png"
        atomic_write_bytes(path, lambda f: f.write(png))
        written.append(path)
        writer.add_image("oracle/confusion_matrix", pixels, step, dataformats="HWC")
    writer.flush()
    return written
