"""evaluate.py end to end on a tiny trained run: every method, every report file, and bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from casm.cli import evaluate_main
from casm.data.datasets import SyntheticShapes
from casm.data.synthetic import CLASS_NAMES as SYNTHETIC_NAMES
from casm.data.transforms import normalize_images

FAST = ["max_images=16", "max_images_slow=4", "chunk_size=64", "faithfulness_steps=4", "figure_images=4",
        "--no-progress"]


@pytest.fixture(scope="module")
def report(trained_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    assert evaluate_main(["--checkpoint", str(trained_checkpoint), f"out_dir={out}", *FAST]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_every_method_and_report_file(report):
    out, payload = report
    results = payload["results"]
    assert set(results) == {"casm", "cam", "gradcam", "gradcampp", "scorecam", "full_image", "centre_box"}
    for name in ("casm", "gradcam"):
        for key in ("le", "om", "f1", "f1a", "mask_mean", "mask_tv", "deletion", "insertion", "average_drop",
                    "increase_in_confidence", "pointing_game", "energy_pointing_game", "acc_masked_in",
                    "acc_masked_out", "acc_inpainted", "sweep_box_accuracy", "ms_per_image", "max_box_acc_v2",
                    "max_box_acc_v2_heldout", "max_box_acc@70", "pxap", "road", "road_morf", "road_lerf"):
            assert np.isfinite(results[name][key]), (name, key)
    assert results["casm"]["images"] == 16 and results["scorecam"]["images"] == 4
    assert payload["versions"]["torch"] == torch.__version__
    assert {"le", "max_box_acc_v2", "pxap", "deletion", "road", "acc_masked_out", "ranking"} \
        <= set(payload["conventions"])
    ranking = payload["ranking"]
    assert set(ranking["mean_rank"]) == {"casm", "cam", "gradcam", "gradcampp", "scorecam"}
    assert {"le", "pxap", "deletion"} <= set(ranking["metrics"]) and "### Ranking" in (out / "metrics.md").read_text()
    assert results["full_image"]["max_box_acc_v2"] >= 0 and 0 < results["full_image"]["pxap"] < 50  # prevalence
    assert payload["eval_config"]["fill"] == "mean"  # the training run's casm.fill
    assert "| casm |" in (out / "metrics.md").read_text()
    assert (out / "figure.png").is_file() and any((out / "tensorboard").iterdir())


def test_the_newer_methods_are_scored_like_the_others(trained_checkpoint, tmp_path):
    """Every method beyond the default list goes through the same metrics; the perturbation methods (one
    forward pass per channel or mask) stop at max_images_slow like Score-CAM."""
    out = tmp_path / "eval"
    names = ["xgradcam", "hirescam", "layercam", "shapleycam", "eigencam", "ablationcam", "rise",
             "integrated_gradients"]
    assert evaluate_main(["--checkpoint", str(trained_checkpoint), f"methods=[{','.join(names)}]", "rise_masks=40",
                          f"out_dir={out}", *FAST]) == 0
    results = json.loads((out / "metrics.json").read_text())["results"]
    for name in names:
        assert np.isfinite(results[name]["le"]) and np.isfinite(results[name]["deletion"]), name
        assert results[name]["images"] == (4 if name in ("ablationcam", "rise") else 16), name


def test_an_unknown_method_lists_the_valid_ones(trained_checkpoint, tmp_path, capsys):
    assert evaluate_main(["--checkpoint", str(trained_checkpoint), "methods=[casm,gradcamm]",
                          f"out_dir={tmp_path}", *FAST]) == 2
    err = capsys.readouterr().err
    assert "gradcamm" in err and "layercam" in err and "rise" in err and err.count("\n") == 1


def test_reference_le_matches_the_boxes_by_hand(report, trained_checkpoint):
    """The full-image box hits when the object's box covers more than half of the image."""
    _, payload = report
    data = payload["eval_config"]["data"]
    ds = SyntheticShapes("val", 16, data["image_size"], data["seed"])
    area = np.array([(s.box[2] - s.box[0]) * (s.box[3] - s.box[1]) for s, _ in ds.samples]) / data["image_size"] ** 2
    assert payload["results"]["full_image"]["le"] == pytest.approx(float(np.mean(area <= 0.5)))


def test_checkpoint_without_masker(tmp_path, capsys):
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "hyper_parameters": {"config": {}}}, tmp_path / "c.ckpt")
    assert evaluate_main(["--checkpoint", str(tmp_path / "c.ckpt")]) == 2
    assert "c.ckpt" in capsys.readouterr().err


def test_unknown_target_layer_lists_valid_ones(trained_checkpoint, tmp_path, capsys):
    code = evaluate_main(["--checkpoint", str(trained_checkpoint), "target_layer=trunk.layer9", f"out_dir={tmp_path}",
                          *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "trunk.layer9" in err and "trunk.layer4" in err


def test_data_without_boxes_skips_localization_only(trained_checkpoint, tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val"):
        for c, name in enumerate(SYNTHETIC_NAMES):  # the tiny checkpoint's classes: labels match by name
            (root / split / name).mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), 25 * c, np.uint8)).save(root / split / name / "a.png")
    out = tmp_path / "eval"
    args = ["--checkpoint", str(trained_checkpoint), "data.name=folder", f"data.root={root}", "data.image_size=32",
            "methods=[casm,gradcam]", f"out_dir={out}", *FAST]
    assert evaluate_main(args) == 0
    payload = json.loads((out / "metrics.json").read_text())
    assert "le" not in payload["results"]["casm"] and "deletion" in payload["results"]["casm"]
    assert any("no boxes" in n for n in payload["notes"])


def test_nan_maps_are_reported_not_averaged(trained_checkpoint, tmp_path, monkeypatch):
    from casm.baselines import GradCAM

    original = GradCAM.__call__

    def one_nan(self, images, class_idx=None):
        maps = original(self, images, class_idx)
        maps[0] = float("nan")
        return maps

    monkeypatch.setattr(GradCAM, "__call__", one_nan)
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(trained_checkpoint), "methods=[gradcam]", f"out_dir={out}", *FAST]) == 0
    payload = json.loads((out / "metrics.json").read_text())
    batches = -(-16 // payload["eval_config"]["data"]["batch_size"])  # one NaN map per batch
    assert payload["results"]["gradcam"]["nan_maps"] == batches
    assert np.isfinite(payload["results"]["gradcam"]["le"])
    assert any("gradcam" in n and "NaN" in n for n in payload["notes"])


def test_lficam_trains_and_is_evaluated_beside_the_baselines(trained_checkpoint, tmp_path):
    from casm.config import load_config
    from casm.training.run import train
    from tests.conftest import TINY

    run = train(load_config(None, TINY + [f"logging.out_dir={tmp_path}", "trainer.max_epochs=1", "mode=lficam",
                                          "logging.name=lficam"]))
    out = tmp_path / "eval"
    args = ["--checkpoint", str(trained_checkpoint), f"lficam_checkpoint={run / 'checkpoints' / 'last.ckpt'}",
            "methods=[casm,gradcam]", f"out_dir={out}", *FAST]
    assert evaluate_main(args) == 0
    payload = json.loads((out / "metrics.json").read_text())
    results = payload["results"]
    assert {"casm", "gradcam", "lficam"} <= set(results) and np.isfinite(results["lficam"]["le"])
    # the "own" judge of LFI-CAM's maps is LFI-CAM's classifier, not the masker's: recompute it directly
    from omegaconf import OmegaConf

    from casm.data.datamodule import LocalizationDataModule
    from casm.evaluation.loaders import load_lficam
    from casm.metrics.localization import binarize

    lficam, _ = load_lficam(run / "checkpoints" / "last.ckpt")
    data = LocalizationDataModule(OmegaConf.create(payload["eval_config"]["data"]), payload["eval_config"]["seed"])
    data.setup()
    x = normalize_images(torch.stack([data.val_set[i]["image"] for i in range(16)]))
    y = torch.tensor([data.val_set[i]["label"] for i in range(16)])
    with torch.no_grad():
        kept = binarize(lficam.explain(x))[:, None].float()
        masked_in = (lficam(x * kept)[0].argmax(1) == y).float().mean().item() * 100
    assert results["lficam"]["acc_masked_in"] == pytest.approx(masked_in, abs=1e-4)
    assert evaluate_main(["--checkpoint", str(trained_checkpoint), f"lficam_checkpoint={trained_checkpoint}",
                          f"out_dir={out}", *FAST]) == 2  # a CASM checkpoint is not an LFI-CAM one


def test_judging_classifiers_get_unique_names(trained_checkpoint, tmp_path):
    out = tmp_path / "eval"
    ckpt = str(trained_checkpoint)
    assert evaluate_main(["--checkpoint", ckpt, f"classifiers=[{ckpt},{ckpt}]", "methods=[casm]", f"out_dir={out}",
                          *FAST]) == 0
    casm_row = json.loads((out / "metrics.json").read_text())["results"]["casm"]
    judged = {k.split("@")[1] for k in casm_row if k.startswith("acc_masked_out@")}
    assert len(judged) == 2  # both last.ckpt files kept, under distinct names


def test_masked_images_are_inpainted_once_however_many_judges(trained_checkpoint, tmp_path, monkeypatch):
    import casm.metrics.faithfulness as faithfulness

    calls = []
    original = faithfulness.telea_inpaint
    monkeypatch.setattr(faithfulness, "telea_inpaint", lambda *a, **k: calls.append(1) or original(*a, **k))
    ckpt = str(trained_checkpoint)
    counts = []
    for judges in ([], [ckpt, ckpt]):
        calls.clear()
        assert evaluate_main(["--checkpoint", ckpt, f"classifiers=[{','.join(judges)}]", "methods=[casm]",
                              f"out_dir={tmp_path / str(len(judges))}", *FAST]) == 0
        counts.append(len(calls))
    assert counts[0] == counts[1] > 0


def test_a_judge_is_read_once_per_process_while_its_file_is_unchanged(trained_checkpoint, tmp_path, monkeypatch):
    import os
    import shutil

    import casm.evaluation.loaders as loaders

    ckpt = tmp_path / "judge.ckpt"
    shutil.copy(trained_checkpoint, ckpt)
    reads = []
    original = loaders.read_checkpoint
    monkeypatch.setattr(loaders, "read_checkpoint", lambda path: reads.append(path) or original(path))
    first = loaders.load_classifier(ckpt)
    second = loaders.load_classifier(ckpt, taken={first[0]})
    assert len(reads) == 1 and second[1] is first[1] and second[0] != first[0]  # same model, unique name
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed: read again
    loaders.load_classifier(ckpt)
    assert len(reads) == 2


def test_baseline_rows_are_scored_against_the_classifier_they_explain(trained_checkpoint, tmp_path):
    """gradcam@NAME explains NAME: its masked-image accuracy is NAME's, recomputed here by hand. (The
    overrides also come after a flag: the command line takes them in any order.)"""
    from omegaconf import OmegaConf

    from casm.baselines import GradCAM
    from casm.config import load_config
    from casm.data.datamodule import LocalizationDataModule
    from casm.evaluation.loaders import load_classifier
    from casm.metrics.localization import binarize
    from casm.training.run import train
    from tests.conftest import TINY

    run = train(load_config(None, TINY + [f"logging.out_dir={tmp_path}", "trainer.max_epochs=1", "casm.warmup_epochs=1",
                                          "seed=1", "logging.name=other"]))
    other = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(trained_checkpoint), f"baseline_classifiers=[{other}]", "--no-progress",
                          "methods=[gradcam]", f"out_dir={out}", "max_images=16", "max_images_slow=4",
                          "faithfulness_steps=4"]) == 0
    payload = json.loads((out / "metrics.json").read_text())
    _, model, _ = load_classifier(other)
    data = LocalizationDataModule(OmegaConf.create(payload["eval_config"]["data"]), splits=("val",))
    data.setup()
    x = normalize_images(torch.stack([data.val_set[i]["image"] for i in range(16)]))
    y = torch.tensor([data.val_set[i]["label"] for i in range(16)])
    with GradCAM(model, None) as cam:
        keep = binarize(cam(x))[:, None].float()
    with torch.no_grad():
        masked_in = (model(x * keep)[0].argmax(1) == y).float().mean().item() * 100
    assert payload["results"]["gradcam@other"]["acc_masked_in"] == pytest.approx(masked_in, abs=1e-4)


def test_a_judge_from_outside_casm_scores_masked_images(trained_checkpoint, tmp_path):
    """judges=[{builder: torchvision.models.resnet18, weights: FILE, kwargs: {...}}]: its masked-out top-1
    is recomputed here by hand from the masks casm wrote; a class list names its outputs."""
    import torchvision
    from omegaconf import OmegaConf

    from casm.data.datamodule import LocalizationDataModule
    from casm.metrics.localization import binarize
    from casm.trained_run import read_run

    torch.manual_seed(3)
    judge = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(judge.state_dict(), tmp_path / "judge.pth")
    spec = f"{{builder: torchvision.models.resnet18, weights: {tmp_path / 'judge.pth'}, kwargs: {{num_classes: 10}}}}"
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(trained_checkpoint), f"judges=[{spec}]", "methods=[casm]",
                          f"out_dir={out}", *FAST]) == 0
    payload = json.loads((out / "metrics.json").read_text())
    module = read_run(trained_checkpoint)
    data = LocalizationDataModule(OmegaConf.create(payload["eval_config"]["data"]), splits=("val",))
    data.setup()
    x = normalize_images(torch.stack([data.val_set[i]["image"] for i in range(16)]))
    y = torch.tensor([data.val_set[i]["label"] for i in range(16)])
    with torch.no_grad():
        logits, feats = module.classifier(x)
        keep = binarize(module.masker(x, feats)[:, 0])[:, None].float()
        masked_out = (judge(x * (1 - keep)).argmax(1) == y).float().mean().item() * 100
        clean = (judge(x).argmax(1) == y).float().mean().item() * 100
    assert payload["results"]["casm"]["acc_masked_out@resnet18"] == pytest.approx(masked_out, abs=1e-4)
    assert payload["clean_top1"]["resnet18"] == pytest.approx(clean, abs=1e-4)


@pytest.mark.parametrize("shared", [0, 3])
def test_a_judge_scores_the_classes_it_shares_with_the_data_and_refuses_none(trained_checkpoint, tmp_path, capsys,
                                                                              shared):
    """A judge whose class list shares no class with the data would read 0 % in every judged column (a
    perfect score where lower is better): refused in one line naming both lists. Sharing 3 of 10: its
    masked-out top-1 is over those 3 classes' images only (recomputed by hand), and the report says so."""
    import torchvision
    from omegaconf import OmegaConf

    from casm.data.datamodule import LocalizationDataModule
    from casm.data.synthetic import CLASS_NAMES
    from casm.metrics.localization import binarize
    from casm.trained_run import read_run

    torch.manual_seed(3)
    judge = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(judge.state_dict(), tmp_path / "judge.pth")
    names = list(CLASS_NAMES[:shared]) + [f"other{k}" for k in range(10 - shared)]
    (tmp_path / "classes.txt").write_text("\n".join(names))
    spec = (f"{{builder: torchvision.models.resnet18, weights: {tmp_path / 'judge.pth'}, kwargs: {{num_classes: 10}}, "
            f"classes: {tmp_path / 'classes.txt'}}}")
    out = tmp_path / "eval"
    code = evaluate_main(["--checkpoint", str(trained_checkpoint), f"judges=[{spec}]", "methods=[casm]",
                          f"out_dir={out}", *FAST])
    if shared == 0:
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "shares no class" in err[0] and "other0" in err[0], err
        assert CLASS_NAMES[0] in err[0] and not out.exists()
        return
    assert code == 0
    payload = json.loads((out / "metrics.json").read_text())
    assert any("judge resnet18 knows 3/10 of the evaluated classes" in n for n in payload["notes"])
    assert payload["judge_classes"] == {"resnet18": "3/10 classes"}
    assert "| out @resnet18 (3/10 classes) |" in (out / "metrics.md").read_text()
    module = read_run(trained_checkpoint)
    data = LocalizationDataModule(OmegaConf.create(payload["eval_config"]["data"]), splits=("val",))
    data.setup()
    x = normalize_images(torch.stack([data.val_set[i]["image"] for i in range(16)]))
    y = torch.tensor([data.val_set[i]["label"] for i in range(16)])
    known = y < shared
    with torch.no_grad():
        logits, feats = module.classifier(x)
        keep = binarize(module.masker(x, feats)[:, 0])[:, None].float()
        hits = judge(x * (1 - keep)).argmax(1) == y
    assert payload["results"]["casm"]["acc_masked_out@resnet18"] == pytest.approx(
        hits[known].float().mean().item() * 100, abs=1e-4)


@pytest.mark.parametrize("spec,message", [
    ("{builder: torchvision.models.resnet18, weights: WEIGHTS}", "does not fit torchvision.models.resnet18"),
    ("{builder: torchvision.models.no_such_net, weights: WEIGHTS}", "has no callable 'no_such_net'"),
    ("{builder: torchvision.models.resnet18}", r"judges\[0\].weights is missing"),
    ("{builder: torchvision.models.resnet18, weights: SEVEN, kwargs: {num_classes: 7}}", "7 outputs"),
])
def test_a_judge_that_does_not_fit_is_refused_in_one_line(trained_checkpoint, tmp_path, capsys, spec, message):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "w.pth")
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), tmp_path / "w7.pth")
    spec = spec.replace("WEIGHTS", str(tmp_path / "w.pth")).replace("SEVEN", str(tmp_path / "w7.pth"))
    code = evaluate_main(["--checkpoint", str(trained_checkpoint), f"judges=[{spec}]", "methods=[casm]",
                          f"out_dir={tmp_path / 'eval'}", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert __import__("re").search(message, err[0]), err[0]


def test_two_processes_under_torchrun_give_the_one_process_numbers(report, trained_checkpoint, tmp_path):
    """``torchrun --nproc_per_node=2 evaluate.py``: each rank explains half of the images, the metrics are
    reduced over both, rank 0 writes the report: every number equals the one-process evaluation's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _, single = report
    out = tmp_path / "two"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "casm",
           "evaluate", "--checkpoint", str(trained_checkpoint), f"out_dir={out}", *FAST]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    double = json.loads((out / "metrics.json").read_text())
    assert set(double["results"]) == set(single["results"])
    for method, metrics in single["results"].items():
        assert set(double["results"][method]) == set(metrics), method
        for key, value in metrics.items():
            if key != "ms_per_image":
                assert double["results"][method][key] == pytest.approx(value, abs=1e-5), (method, key)
    assert double["results"]["casm"]["images"] == 16 and double["results"]["scorecam"]["images"] == 4
    assert (out / "figure.png").is_file()


def test_a_batch_of_only_unreadable_images_does_not_end_the_evaluation(trained_checkpoint, tmp_path):
    from tests.test_own_data import _folder

    root = _folder(tmp_path / "data", size=32, per_class=3)
    for name in ("0.png", "1.png"):  # the first batch of two (sorted: a/0, a/1) is all unreadable
        (root / "val" / "a" / name).write_bytes(b"not an image")
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(trained_checkpoint), f"out_dir={out}", "data.name=folder",
                          f"data.root={root}", "data.image_size=32", "data.batch_size=2", "data.num_workers=0",
                          "data.skip_corrupt=true", "methods=[casm]", "--no-progress"]) == 0
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["results"]["casm"]["images"] == 4  # the other four, after the empty batch
    assert any("2 unreadable" in note for note in payload["notes"])
