"""Unseen-class experiments: split files, class selection, evaluation on classes a classifier never
saw, and the protocol runner (resume without retraining)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf

from casm.cli import evaluate_main, split_main
from casm.config import CONFIG_DIR, ConfigError, DataConfig, evaluation_data, load_config
from casm.data import synthetic
from casm.data.datamodule import LocalizationDataModule
from casm.data.datasets import SyntheticShapes, dataset_classes, keep_per_class
from casm.data.splits import ClassSplit, fingerprint, make_split
from casm.data.transforms import normalize_images
from casm.evaluation.loaders import KnownClasses
from tests.conftest import TINY

CLASSES_100 = list(synthetic.class_names(100))


def _data(**kw):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), kw)


# ---------------------------------------------------------------- the generator's many-class variants
def test_hundred_classes_any_two_cues_identify_a_class():
    cues = synthetic.class_cues(100)
    assert len(set(cues)) == 100 and synthetic.class_cues(10) == tuple((i, i, i) for i in range(10))
    for pair in ((0, 1), (0, 2), (1, 2)):
        assert len({(c[pair[0]], c[pair[1]]) for c in cues}) == 100  # a Latin square: every pair is unique
    for family in range(3):
        assert set(Counter(c[family] for c in cues).values()) == {10}  # each cue value shared by ten classes
    assert len(set(synthetic.class_cues(1000))) == 1000


def test_ten_class_rendering_is_unchanged_by_the_variants():
    a = synthetic.render_sample(3, synthetic.sample_rng(0, "train", 5), 64)
    b = synthetic.render_sample(3, synthetic.sample_rng(0, "train", 5), 64, num_classes=10)
    assert (a.image == b.image).all()
    c = synthetic.render_sample(3, synthetic.sample_rng(0, "train", 5), 64, num_classes=100)  # (0, 3, 3)
    assert not (a.image == c.image).all() and c.mask.any()


def test_missing_cues():
    names = [n for n in CLASSES_100 if n.startswith("circle+")]  # shape 0 with every texture and part
    missing = synthetic.missing_cues(names, 100)
    assert missing["shape"] == list(synthetic.SHAPES[1:]) and missing["texture"] == [] and missing["part"] == []


# ---------------------------------------------------------------- split files
def test_split_is_disjoint_complete_and_deterministic(tmp_path):
    split = make_split(CLASSES_100, "synthetic", seed=3)
    sizes = [len(c) for c in split.subsets.values()]
    assert split.names == list("ABCDEF") and sizes == [5, 5, 10, 30, 30, 20]
    members = [c for classes in split.subsets.values() for c in classes]
    assert sorted(members) == sorted(CLASSES_100) and len(set(members)) == 100
    assert make_split(CLASSES_100, "synthetic", seed=3).subsets == split.subsets
    assert make_split(CLASSES_100, "synthetic", seed=4).subsets != split.subsets
    loaded = ClassSplit.load(split.save(tmp_path / "s.json"))
    assert loaded.subsets == split.subsets and loaded.dataset["fingerprint"] == fingerprint(CLASSES_100)
    assert loaded.resolve("C-F") == ["C", "D", "E", "F"] and loaded.resolve("B+D") == ["B", "D"]
    with pytest.raises(ValueError, match="no subset 'G'"):
        loaded.resolve("B-G")


@pytest.mark.parametrize("proportions,sizes", [((1, 1, 1), [4, 3, 3]), ((0.5, 0.5), [5, 5]), ((0.9, 0.1), [9, 1])])
def test_split_counts_add_up(proportions, sizes):
    split = make_split(list(synthetic.CLASS_NAMES), "synthetic", proportions)
    assert [len(c) for c in split.subsets.values()] == sizes


def test_split_with_an_empty_subset_is_refused():
    with pytest.raises(ValueError, match=r"subset\(s\) B would be empty"):
        make_split(list(synthetic.CLASS_NAMES), "synthetic")  # 5 % of 10 classes


def test_split_for_another_dataset_is_refused(tmp_path):
    path = make_split(CLASSES_100, "synthetic").save(tmp_path / "s.json")
    dm = LocalizationDataModule(_data(split_file=str(path), split_subsets=["A"], num_train=8, num_val=8))
    with pytest.raises(ValueError, match=r"made for a synthetic dataset with 100 classes.*has 10"):
        dm.setup()
    reordered = ClassSplit.load(path)
    with pytest.raises(ValueError, match="another order"):
        reordered.check_matches(list(reversed(CLASSES_100)), "synthetic")
    raw = json.loads(path.read_text())
    raw["subsets"]["B"].append(raw["subsets"]["A"][0])
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="disjoint"):
        ClassSplit.load(tmp_path / "bad.json")


def test_split_command(tmp_path, capsys):
    out = tmp_path / "split.json"
    assert split_main(["--out", str(out), "data.synthetic_classes=100"]) == 0
    assert "A:    5 classes" in capsys.readouterr().out
    assert ClassSplit.load(out).dataset["num_classes"] == 100
    assert split_main(["--out", str(out), "data.synthetic_classes=100"]) == 2  # never silently replaced
    assert "--force" in capsys.readouterr().err


# ---------------------------------------------------------------- class selection and labels
def test_training_set_labels_reindex_and_keep_the_same_images(tmp_path):
    split = make_split(CLASSES_100, "synthetic", seed=1)
    path = split.save(tmp_path / "s.json")
    dm = LocalizationDataModule(_data(synthetic_classes=100, split_file=str(path), split_subsets=["C", "D"],
                                      num_train=300, num_val=40, image_size=32))
    dm.setup()
    expected = [c for c in CLASSES_100 if c in split.subsets["C"] + split.subsets["D"]]
    assert dm.classes == expected and len(expected) == 40
    full = SyntheticShapes("train", 300, 32, num_classes=100)
    full_by_image = {s.image.tobytes(): full.classes[label] for s, label in full.samples}
    for sample, label in dm.train_set.samples:  # every kept image is the full set's image of the same class
        assert full_by_image[sample.image.tobytes()] == dm.classes[label]
    assert {label for _, label in dm.train_set.samples} <= set(range(40))


def test_samples_per_class():
    ds = SyntheticShapes("train", 400, 32, samples_per_class=3)
    assert max(Counter(label for _, label in ds.samples).values()) == 3 and len(ds.samples) == 30
    records = [(f"img{i}", i % 4, []) for i in range(40)]
    kept = keep_per_class(records, 2, seed=0)
    assert Counter(r[1] for r in kept) == {0: 2, 1: 2, 2: 2, 3: 2} and kept == sorted(kept, key=records.index)
    with pytest.raises(ConfigError, match="samples_per_class"):
        load_config(None, ["data.samples_per_class=0"])


def test_split_keys_are_validated():
    with pytest.raises(ConfigError, match="go together"):
        load_config(None, ["data.split_file=x.json"])
    with pytest.raises(ConfigError, match="drop data.include_classes"):
        load_config(None, ["data.split_file=x.json", "data.split_subsets=[A]", "data.include_classes=[0]"])
    with pytest.raises(ConfigError, match="synthetic_classes=7"):
        load_config(None, ["data.synthetic_classes=7"])


def test_class_selection_at_evaluation_replaces_the_training_runs():
    saved = {"exclude_classes": ["0", "1"], "include_classes": None, "split_file": None, "split_subsets": None,
             "samples_per_class": 10, "name": "synthetic"}
    data = evaluation_data(saved, ["data.include_classes=[0,1]"])
    assert data["exclude_classes"] is None and data["samples_per_class"] is None
    assert evaluation_data(saved, ["max_images=4"])["exclude_classes"] == ["0", "1"]


def test_known_classes_map_by_name():
    known = KnownClasses.match(torch.nn.Identity(), ["c", "a"], ["a", "b", "c"], "m")
    assert known.label_map.tolist() == [1, -1, 0] and known.known_count == 2
    assert known.labels(torch.tensor([2, 1, 0])).tolist() == [0, -1, 1]


# ---------------------------------------------------------------- evaluation on unseen classes
@pytest.fixture(scope="module")
def model_without_0_and_1(tmp_path_factory):
    from casm.training.run import train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, TINY + [f"logging.out_dir={out}", "trainer.max_epochs=1", "data.exclude_classes=[0,1]"])
    return train(cfg) / "checkpoints" / "last.ckpt"


def _hand_scores(checkpoint, data_overrides):
    """The classifier's clean and masked-in top-1, computed here with labels mapped by class name."""
    from casm.evaluation import read_run
    from casm.metrics.localization import binarize

    module = read_run(checkpoint)
    saved = module.config
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), evaluation_data(saved["data"], data_overrides),
                           OmegaConf.from_dotlist(data_overrides).get("data", {}))
    dm = LocalizationDataModule(data, splits=("val",))
    dm.setup()
    x = normalize_images(torch.stack([dm.val_set[i]["image"] for i in range(16)]))
    y = torch.tensor([dm.val_set[i]["label"] for i in range(16)])
    names = module.class_names
    mapped = torch.tensor([names.index(dm.classes[int(v)]) if dm.classes[int(v)] in names else -1 for v in y])
    seen = mapped >= 0
    with torch.no_grad():
        logits, feats = module.classifier(x)
        keep = binarize(module.masker(x, feats)[:, 0])[:, None].float()
        masked_in = module.classifier(x * keep)[0].argmax(1)
    return seen, (masked_in == mapped)[seen].float().mean().item() * 100 if seen.any() else None


@pytest.mark.parametrize("selection", [["data.exclude_classes=[8,9]"],
                                       ["data.include_classes=[0,1]", "data.num_val=96"],
                                       ["data.include_classes=[0,1,2,3]", "data.num_val=64"]])
def test_evaluation_on_other_classes_maps_labels_by_name(model_without_0_and_1, tmp_path, selection):
    """Trained without classes 0 and 1: evaluated on 0..7 (same count, other classes), on 0 and 1 only
    (all unseen), and on 0..3 (mixed); OM and masked-image accuracy only where the label is known."""
    out = tmp_path / "eval"
    args = ["--checkpoint", str(model_without_0_and_1), "methods=[casm,gradcam]", f"out_dir={out}", "max_images=16",
            "max_images_slow=4", "faithfulness_steps=4", "--no-progress", *selection]
    assert evaluate_main(args) == 0
    payload = json.loads((out / "metrics.json").read_text())
    row = payload["results"]["casm"]
    seen, masked_in = _hand_scores(model_without_0_and_1, selection)
    assert row["images"] == 16 and row["images_seen"] == int(seen.sum())
    assert 0 <= row["le"] <= 1 and 0 <= row["f1"] <= 1  # box-only metrics for every image
    if seen.any():
        assert row["acc_masked_in"] == pytest.approx(masked_in, abs=1e-4) and "om" in row
    else:
        assert "om" not in row and "acc_masked_in" not in row and "deletion" not in row
        assert "om" not in payload["results"]["gradcam"]
        assert any("never seen" in n for n in payload["notes"])


# ---------------------------------------------------------------- the protocol runner
EXPERIMENT = ["data.synthetic_classes=10", "unseen.proportions=[0.1,0.1,0.2,0.2,0.2,0.2]",
              "unseen.training_sets=[C-F,F]", "unseen.judge=false",
              "unseen.scarcity_samples_per_class=null",
              "unseen.eval_overrides=['methods=[casm]','max_images_slow=4','faithfulness_steps=4']",
              "data.num_train=160", "data.num_val=60", "data.epoch_images=160", "unseen.seeds=null",
              "logging.name=unseen"]


def test_experiment_killed_after_its_first_run_resumes_without_retraining(tmp_path, capsys):
    from casm.cli import experiment_main, main
    from casm.experiments.unseen import UnseenExperiment

    cfg = load_config(CONFIG_DIR / "unseen.yaml", TINY + EXPERIMENT + [f"logging.out_dir={tmp_path}"])
    calls = []

    def killed_during_f(argv):  # trains C-F; F dies after its first epoch, as if killed
        calls.append(argv)
        if argv[2].endswith("F.yaml") and not argv[2].endswith("C-F.yaml"):
            main(argv + ["trainer.max_epochs=1"])
            return 137
        return main(argv)

    with pytest.raises(RuntimeError, match="training F failed"):
        UnseenExperiment(cfg, launch=killed_during_f).run(progress=False, log=lambda m: None)
    first = tmp_path / "unseen" / "models" / "C-F" / "run" / "checkpoints" / "last.ckpt"
    stamp = first.resolve().stat().st_mtime_ns
    assert experiment_main(["unseen", "--dry-run", *TINY, *EXPERIMENT, f"logging.out_dir={tmp_path}"]) == 0
    plan = capsys.readouterr().out
    assert "C-F" in plan and "finished" in plan and "resume" in plan and "split.json (exists)" in plan

    calls.clear()
    report = UnseenExperiment(cfg, launch=lambda argv: calls.append(argv) or main(argv)).run(
        progress=False, log=lambda m: None)
    assert len(calls) == 1 and calls[0][-1].startswith("resume=") and "F.yaml" in calls[0][2]
    assert first.resolve().stat().st_mtime_ns == stamp  # C-F was not retrained
    data = json.loads((report / "metrics.json").read_text())
    assert list(data["runs"]) == ["C-F", "F"] and data["runs"]["F"]["fraction_seen"] == pytest.approx(0.2)
    for label, run in data["runs"].items():
        seen = [n for n, c in run["subsets"].items() if c["seen"]]
        assert seen == (["C", "D", "E", "F"] if label == "C-F" else ["F"])
        assert "om" not in run["subsets"]["A"] and "om" in run["subsets"]["F"]
        assert run["le"]["seen"] is not None and run["le"]["unseen"] is not None
    table = (report / "unseen.md").read_text()
    # (a tiny run's masks fail the collapse check, which the row then says)
    assert re.search(r"\| C-F( \*\*\(collapsed\)\*\*)? \| 80 % \|", table) and "centred box" in table
    assert (report / "unseen.png").stat().st_size > 0

    changed = load_config(CONFIG_DIR / "unseen.yaml", TINY + EXPERIMENT + [f"logging.out_dir={tmp_path}",
                                                                           "trainer.max_epochs=3"])
    with pytest.raises(ConfigError, match="started with another config"):
        UnseenExperiment(changed, launch=lambda argv: 0).run(progress=False, log=lambda m: None)


def test_experiment_refuses_its_own_class_selection(tmp_path):
    from casm.experiments.unseen import UnseenExperiment

    cfg = load_config(None, TINY + EXPERIMENT + [f"logging.out_dir={tmp_path}", "data.exclude_classes=[1]"])
    with pytest.raises(ConfigError, match="chooses the classes from its split"):
        UnseenExperiment(cfg)


def test_dataset_classes_lists_folders_not_images(tmp_path):
    for c in ("b", "a"):
        (tmp_path / "train" / c).mkdir(parents=True)
    assert dataset_classes(_data(name="folder", root=str(tmp_path))) == ["a", "b"]
    assert dataset_classes(_data(synthetic_classes=100)) == CLASSES_100


@pytest.mark.slow
def test_fake_imagenet_split_train_evaluate(tmp_path):
    """A fake ILSVRC tree (synset folders, per-image XML) through the whole protocol, with real
    training processes: split command -> experiment (two training sets and a judge) -> report."""
    import numpy as np
    from PIL import Image

    from casm.cli import experiment_main

    root, rng = tmp_path / "imagenet", np.random.default_rng(0)
    synsets = [f"n0{i:07d}" for i in range(6)]
    xml = ("<annotation><object><name>{s}</name><bndbox><xmin>8</xmin><ymin>8</ymin><xmax>39</xmax>"
           "<ymax>39</ymax></bndbox></object></annotation>")
    for c, synset in enumerate(synsets):
        for i in range(6):
            (root / "train" / synset).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / synset / f"{i}.JPEG")
        for i in range(2):
            stem = f"ILSVRC2012_val_{c * 2 + i:08d}"
            (root / "val").mkdir(exist_ok=True)
            (root / "val_xml").mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / "val" / f"{stem}.JPEG")
            (root / "val_xml" / f"{stem}.xml").write_text(xml.format(s=synset))
    data = ["data.name=imagenet", f"data.root={root}", "data.image_size=32", "data.resize=36", "data.batch_size=4",
            "data.num_workers=0"]
    split = tmp_path / "split.json"
    assert split_main(["--out", str(split), "--proportions", "1,1,1,1,1,1", *data]) == 0
    args = ["unseen", "--no-progress", *TINY, *data, f"logging.out_dir={tmp_path / 'runs'}",
            f"unseen.split_file={split}",
            "unseen.training_sets=[B-F,E-F]", "unseen.scarcity_samples_per_class=2", "unseen.seeds=null",
            "data.epoch_images=null",
            "unseen.eval_overrides=['methods=[casm,gradcam]','max_images_slow=2','faithfulness_steps=2']"]
    assert experiment_main(args) == 0
    report = json.loads((tmp_path / "runs" / "unseen" / "report" / "metrics.json").read_text())
    assert list(report["runs"]) == ["B-F", "E-F", "B-F, 2 / class"]
    assert report["runs"]["E-F"]["fraction_seen"] == pytest.approx(2 / 6)
    cell = report["runs"]["E-F"]["subsets"]["A"]
    assert not cell["seen"] and cell["images"] == 2 and cell["images_seen"] == 0 and "acc_masked_out@judge" in cell
    assert report["runs"]["B-F"]["subsets"]["F"]["images_seen"] == 2


def test_report_pools_subsets_by_images_with_binomial_errors(tmp_path):
    """Seen LE pools the seen subsets' images: (0.5 * 10 + 0.2 * 30) / 40; its error sqrt(p (1 - p) / n)."""
    from types import SimpleNamespace

    from casm.experiments.unseen_report import collect

    split = ClassSplit({"A": ["a"], "B": ["b"], "C": ["c"]}, {}, 0, {}, None)
    run_dir = tmp_path / "run"
    for subset, le, images in (("A", 0.9, 20), ("B", 0.5, 10), ("C", 0.2, 30)):
        (run_dir / "eval" / subset).mkdir(parents=True)
        row = {"le": le, "images": images, "images_seen": images if subset != "A" else 0}
        (run_dir / "eval" / subset / "metrics.json").write_text(json.dumps(
            {"results": {"casm": row, "centre_box": {"le": 0.7, "images": images}}, "clean_top1": {"own": 50.0}}))
    run = SimpleNamespace(label="B-C", subsets=["B", "C"], run_dir=run_dir, tags={},
                          config=OmegaConf.create({"data": {"samples_per_class": None}}))
    le = collect(split, [run], None)["runs"]["B-C"]["le"]
    seen = (0.5 * 10 + 0.2 * 30) / 40
    assert le["seen"] == pytest.approx(seen) and le["unseen"] == pytest.approx(0.9)
    assert le["gap"] == pytest.approx(0.9 - seen)
    assert le["seen_se"] == pytest.approx((seen * (1 - seen) / 40) ** 0.5)
    assert le["gap_se"] == pytest.approx((seen * (1 - seen) / 40 + 0.9 * 0.1 / 20) ** 0.5)

    # a run whose training recorded collapsed masks is marked in the data, every table and the text
    from casm.experiments.unseen_report import table, write_unseen_report

    assert collect(split, [run], None)["runs"]["B-C"]["collapsed"] == []
    (run_dir / "health.json").write_text(json.dumps({"collapsed": ["all-on masks (mean 0.950 > 0.9)"]}))
    data = collect(split, [run], None)
    assert data["runs"]["B-C"]["collapsed"] == ["all-on masks (mean 0.950 > 0.9)"]
    assert "| B-C **(collapsed)** |" in table(data, "le", split.names)
    report = write_unseen_report(tmp_path / "report", split, [run], OmegaConf.create({"name": "folder"}), None)
    assert "- B-C: all-on masks (mean 0.950 > 0.9)" in (report / "unseen.md").read_text()


def _seeded_run(tmp_path, label, subsets, seed, les):
    """A finished run of training set ``label`` at ``seed`` whose LE on subsets A, B is ``les``."""
    from casm.experiments.runs import PlannedRun

    run_dir = tmp_path / label / f"seed{seed}"
    for subset, le in zip("AB", les):
        (run_dir / "eval" / subset).mkdir(parents=True)
        row = {"le": le, "images": 10, "images_seen": 10}
        (run_dir / "eval" / subset / "metrics.json").write_text(json.dumps(
            {"results": {"casm": row, "centre_box": {"le": 0.7, "images": 10}}, "clean_top1": {"own": 50.0}}))
    return PlannedRun(f"{label}, seed {seed}", OmegaConf.create({"data": {"samples_per_class": None}}), run_dir,
                      run_dir / "c.yaml", subsets=subsets, tags={"set": label, "seed": seed})


def test_report_over_seeds_gives_each_gap_an_interval_and_pairs_it_with_the_first_sets(tmp_path):
    """Set AB sees both subsets (no gap); set B sees B only: gap = LE(A) - LE(B) per seed, by hand."""
    from casm.experiments.unseen_report import collect, seeds_table, write_unseen_report

    split = ClassSplit({"A": ["a", "c"], "B": ["b", "d"]}, {}, 0, {}, None)
    runs = [_seeded_run(tmp_path, "A+B", ["A", "B"], s, (0.3, 0.3)) for s in (0, 1, 2)]
    runs += [_seeded_run(tmp_path, "B", ["B"], s, les) for s, les in
             enumerate([(0.6, 0.3), (0.7, 0.3), (0.8, 0.3)])]  # gaps 0.3, 0.4, 0.5
    data = collect(split, runs, None)
    b = data["over_seeds"]["B"]
    assert b["seeds"] == [0, 1, 2] and b["fraction_seen"] == pytest.approx(0.5)
    gap = b["le"]["gap"]
    assert gap["mean"] == pytest.approx(0.4) and gap["sd"] == pytest.approx(0.1)
    assert gap["high"] - gap["mean"] == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, abs=1e-6)
    assert "gap" not in data["over_seeds"]["A+B"]["le"]  # it sees every subset: no unseen LE, no gap
    assert b["le"]["gap_minus_first"] is None  # ... so nothing to pair with
    assert "| B | 50 % | 0, 1, 2 | 0.300 ± 0.000 [0.300, 0.300] | 0.700 ± 0.100 [0.452, 0.948] | " \
           "+0.400 ± 0.100 [+0.152, +0.648] |" in seeds_table(data, "le")
    report = write_unseen_report(tmp_path / "report", split, runs, OmegaConf.create({"name": "folder"}), None)
    assert "## Over seeds" in (report / "unseen.md").read_text() and (report / "unseen.png").stat().st_size > 0


def test_unseen_seeds_plan_one_run_per_set_and_seed(tmp_path):
    from casm.experiments.unseen import UnseenExperiment

    cfg = load_config(CONFIG_DIR / "unseen.yaml", TINY + EXPERIMENT + [f"logging.out_dir={tmp_path}",
                                                                       "unseen.seeds=[3,4]", "unseen.judge=true"])
    experiment = UnseenExperiment(cfg)
    runs = experiment.plan(experiment.split(write=False))
    assert [r.label for r in runs] == ["C-F, seed 3", "F, seed 3", "C-F, seed 4", "F, seed 4", "judge"]
    assert [r.config.seed for r in runs] == [3, 3, 4, 4, 4]  # the judge: first seed + judge_seed_offset
    assert runs[2].run_dir == tmp_path / "unseen" / "models" / "C-F" / "seed4"
    with pytest.raises(ConfigError, match="names a seed twice"):
        UnseenExperiment(load_config(CONFIG_DIR / "unseen.yaml", TINY + EXPERIMENT + [
            f"logging.out_dir={tmp_path}", "unseen.seeds=[1,1]"])).plan(experiment.split(write=False))


def test_a_run_config_from_an_older_casm_is_the_same_config(tmp_path):
    """A key a later casm adds (at its default) does not make a started run 'another config'."""
    from casm.experiments.runs import write_config
    from casm.experiments.unseen import UnseenExperiment

    cfg = load_config(CONFIG_DIR / "unseen.yaml", TINY + EXPERIMENT + [f"logging.out_dir={tmp_path}"])
    experiment = UnseenExperiment(cfg)
    run = experiment.plan(experiment.split())[0]
    write_config(run)
    older = run.config_file.read_text().replace("  flip: null\n", "")
    assert older != run.config_file.read_text()
    run.config_file.write_text(older)
    write_config(run)  # accepted
    run.config_file.write_text(older.replace("max_epochs: 2", "max_epochs: 5"))
    with pytest.raises(ConfigError, match="started with another config"):
        write_config(run)


def test_an_evaluation_from_an_older_casm_is_not_redone(tmp_path):
    """An earlier evaluation's settings are compared through the schema: a missing key at its default
    is the same evaluation, another value is not."""
    from casm.config import EvalConfig
    from casm.experiments.runs import same_settings as _same_settings

    wanted = load_config(None, ["methods=[casm]", "max_images=16"], schema_class=EvalConfig)
    saved = OmegaConf.to_container(wanted, resolve=True)
    del saved["data"]["flip"]
    assert _same_settings(saved, wanted)
    assert not _same_settings(dict(saved, max_images=32), wanted) and not _same_settings(None, wanted)
