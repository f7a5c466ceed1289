"""Pictures: feature t-SNE and confusion matrix, during a run and after it, and the custom-scalars layout."""

import re

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

import tladapt
from tladapt.cli import main
from tladapt.plots import confusion_figure, figure_png, scalars_layout

SMALL = {"data": {"tasks": ["webcam->dslr"]}, "model": {"hidden": [16]},
         "trainer": {"steps": 6, "batch_size": 16, "eval_every": 3, "log_every": 3, "progress": False}}


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_plots_during_a_run_change_no_number(tmp_path):
    on = {**SMALL, "trainer": {**SMALL["trainer"], "plots": True}}
    [plain] = tladapt.run(tladapt.build_config(SMALL, plugins={"dann": {"hidden": [8]}}), runs_dir=tmp_path / "a")
    [pictured] = tladapt.run(tladapt.build_config(on, plugins={"dann": {"hidden": [8]}}), runs_dir=tmp_path / "b")
    assert pictured.results["history"] == plain.results["history"]  # pictures are drawn outside training
    assert pictured.results["config_id"] == plain.results["config_id"]
    d = pictured.run_dir
    for name in ("features_start.png", "features_end.png", "confusion_target_oracle.png"):
        w, h = Image.open(d / name).size
        assert w > 400 and h > 300, name
    images = events(d).Tags()["images"]
    assert {"plots/features_start", "plots/features_end", "oracle/confusion_matrix"} <= set(images)
    projector = (d / "projector_config.pbtxt").read_text()
    assert "features_start" in projector and "features_end" in projector
    meta = next(d.rglob("metadata.tsv")).read_text().splitlines()
    assert meta[0] == "domain\tclass (target: oracle)" and len(meta) == 1 + 265 + 157  # webcam's training split (90% of 295) + dslr
    assert not (plain.run_dir / "features_end.png").exists()


def test_plot_draws_a_finished_run_from_its_checkpoint(tmp_path, capsys):
    [run] = tladapt.run(tladapt.build_config(SMALL), runs_dir=tmp_path)
    assert main(["plot", str(run.run_dir)]) == 0
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in written] == ["features_end.png", "confusion_target_oracle.png"]
    assert "oracle/confusion_matrix" in events(run.run_dir).Tags()["images"]
    assert main(["plot", str(tmp_path)]) == 2  # not a run directory: a clear error


def test_the_confusion_matrix_counts_each_true_class():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 1, 0])
    fig = confusion_figure(y_true, y_pred, ("a", "b", "c"), "t")
    image = fig.axes[0].images[0].get_array()
    assert np.allclose(image, [[100 / 3, 200 / 3, 0], [0, 100, 0], [100, 0, 0]])
    assert "oracle" in fig.axes[0].get_title() and "accuracy 50.0%" in fig.axes[0].get_title()
    png, pixels = figure_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and pixels.ndim == 3 and pixels.shape[2] == 3


def test_every_run_opens_on_the_custom_scalars_layout(tmp_path):
    [run] = tladapt.run(tladapt.build_config(SMALL, plugins={"dann": {"hidden": [8]}}), runs_dir=tmp_path)
    acc = events(run.run_dir)
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    titles = [c.title for c in layout.category]
    assert titles == ["accuracy", "losses", "schedules"]
    tags = set(acc.Tags()["scalars"])
    for category, charts in scalars_layout().items():
        for title, (_, patterns) in charts.items():  # every chart shows something this DANN run logged
            assert any(re.fullmatch(p, t) for p in patterns for t in tags), (category, title)
    assert "oracle/target_acc" in tags and "train/lambda" in tags
