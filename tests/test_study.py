"""Studies: variants x seeds as ordinary runs, resumed without retraining, typos refused in one line,
and the report's numbers against hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from casm.cli import experiment_main, main
from casm.config import CONFIG_DIR, ConfigError
from casm.experiments.runs import LocalLauncher, PlannedRun, write_config
from casm.experiments.study import Study, load_study
from casm.experiments.study_report import collect, markdown
from tests.conftest import TINY


def _study_file(tmp_path: Path, **changes) -> Path:
    study = {"name": "tiny", "base": str(CONFIG_DIR / "default.yaml"),
             "overrides": [o for o in TINY if not o.startswith("logging.")] + ["data.num_train=48"],
             "variants": {"a": [], "b": ["casm.thinning=F"]}, "seeds": [0, 1], "out_dir": str(tmp_path / "out"),
             "evaluation": {"judge": False, "overrides": ["methods=[casm]", "max_images_slow=8"]}}
    study.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _study(path: Path, launch=None) -> Study:
    cfg, resolved = load_study(path)
    return Study(cfg, resolved, LocalLauncher(launch or main))


def test_each_run_is_marked_finished_when_it_ends_not_when_the_study_does(tmp_path):
    """The study process itself killed (Ctrl-C, SIGTERM, a lost SLURM allocation) during b, seed 1: the
    three runs that ended before are finished on disk, so a new start skips them instead of resuming."""
    def study_killed_during_b_seed_1(argv):
        if argv[2].endswith("b/seed1.yaml"):
            raise KeyboardInterrupt
        return main(argv)

    with pytest.raises(KeyboardInterrupt):
        _study(_study_file(tmp_path), study_killed_during_b_seed_1).run(progress=False, log=lambda m: None)
    finished = sorted(p.parent.relative_to(tmp_path / "out" / "tiny" / "runs").as_posix()
                      for p in (tmp_path / "out" / "tiny" / "runs").glob("*/seed*/finished.json"))
    assert finished == ["a/seed0", "a/seed1", "b/seed0"]


def test_a_killed_study_resumes_without_retraining_what_finished(tmp_path, capsys):
    path = _study_file(tmp_path)
    calls = []

    def killed_at_b_seed_1(argv):  # b seed 1 dies after its first epoch, as if killed
        calls.append(argv)
        if argv[2].endswith("b/seed1.yaml"):
            main(argv + ["trainer.max_epochs=1"])
            return 137
        return main(argv)

    with pytest.raises(RuntimeError, match=r"training b, seed 1 failed \(exit code 137\)"):
        _study(path, killed_at_b_seed_1).run(progress=False, log=lambda m: None)
    assert len(calls) == 4
    root = tmp_path / "out" / "tiny"
    stamps = {p: p.resolve().stat().st_mtime_ns for p in root.glob("runs/*/seed*/checkpoints/last.ckpt")}
    assert len(stamps) == 4  # the killed run has its first epoch's checkpoint

    assert experiment_main(["study", "--config", str(path), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert plan.count(" finished ") == 3 and "b, seed 1                resume" in plan

    calls.clear()
    report = _study(path, lambda argv: calls.append(argv) or main(argv)).run(progress=False, log=lambda m: None)
    assert len(calls) == 1 and calls[0][2].endswith("b/seed1.yaml") and calls[0][-1] == "resume=last"
    for ckpt, stamp in stamps.items():
        if "b/seed1" not in str(ckpt):
            assert ckpt.resolve().stat().st_mtime_ns == stamp  # not retrained
    data = json.loads((report / "study.json").read_text())
    assert list(data["variants"]) == ["a", "b"] and data["reference"] == "a"
    le = data["variants"]["b"]["metrics"]["le"]
    assert list(le["seeds"]) == ["0", "1"] and le["summary"]["n"] == 2
    assert le["paired_difference"]["n"] == 2
    assert "### LE" in (report / "study.md").read_text() and (report / "study.png").stat().st_size > 0
    assert any((report / "tensorboard").iterdir())

    calls.clear()  # a third time: nothing is trained or evaluated again
    _study(path, lambda argv: calls.append(argv) or main(argv)).run(progress=False, log=lambda m: None)
    assert calls == []

    changed = _study_file(tmp_path, overrides=TINY[:-1] + ["data.num_train=48", "trainer.max_epochs=3"])
    with pytest.raises(ConfigError, match="started with another config"):
        _study(changed, lambda argv: 0).run(progress=False, log=lambda m: None)


@pytest.mark.parametrize("changes, message", [
    ({"variant": {"a": []}}, "unknown config key 'variant'; did you mean variants"),
    ({"variants": {"a": ["casm.tinning=F"]}}, "variants.a: command line: unknown config key 'casm.tinning'"),
    ({"variants": {"a": ["casm.thinning=G"]}}, "variants.a: casm.thinning='G' is not one of"),
    ({"variants": {"judge": []}}, "variant name 'judge' must be a folder name"),
    ({"variants": {"a/b": []}}, "variant name 'a/b' must be a folder name"),
    ({"reference": "c"}, "reference=c is not a variant"),
    ({"seeds": [0, 0]}, "each once"),
    ({"base": "nowhere.yaml"}, "base=nowhere.yaml not found"),
    ({"launcher": "slurm"}, "launcher='slurm' is not one of local, submitit"),
    ({"evaluation": {"overrides": ["methods=[gradcam]"]}}, "keep casm among them"),
    ({"evaluation": {"overides": []}}, "unknown config key 'evaluation.overides'"),
    ({"variants": {"a": ["model.pretrained=@judge"]}}, "names the study's judge, but evaluation.judge is false"),
    ({"overrides": ["model.pretrained=@judge"]}, "belongs in a variant's overrides only"),
])
def test_a_study_typo_is_one_error_line(tmp_path, capsys, changes, message):
    path = _study_file(tmp_path, **changes)
    assert experiment_main(["study", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_study_needs_its_file(capsys):
    assert experiment_main(["study", "--dry-run"]) == 2
    assert "needs --config STUDY.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIG_DIR / "studies").glob("*.yaml")))
def test_the_shipped_studies_plan(name, capsys):
    assert experiment_main(["study", "--config", str(CONFIG_DIR / "studies" / name), "--dry-run",
                            "out_dir=/nonexistent"]) == 0
    assert "report ->" in capsys.readouterr().out


def test_a_variant_can_start_from_the_studys_judge(tmp_path):
    path = _study_file(tmp_path, variants={"a": [], "fixed": ["casm.thinning=F", "model.pretrained=@judge"]},
                       evaluation={"judge": True})
    cfg, resolved = load_study(path)
    runs = {r.label: r for r in Study(cfg, resolved).plan()}
    judge = runs["judge"].checkpoint
    assert runs["fixed, seed 0"].config.model.pretrained == str(judge) and runs["a, seed 0"].config.model.pretrained \
        is None
    assert runs["judge"].config.model.pretrained is None and runs["judge"].config.casm.warmup_epochs == 2


def _fake_run(root: Path, variant: str, seed: int, le: float, collapsed: list[str] | None = None) -> PlannedRun:
    run_dir = root / variant / f"seed{seed}"
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "metrics.json").write_text(json.dumps({
        "results": {"casm": {"le": le, "mask_mean": 0.2}, "centre_box": {"le": 0.738}},
        "clean_top1": {"own": 90.0 + seed}}))
    if collapsed:
        (run_dir / "health.json").write_text(json.dumps({"collapsed": collapsed}))
    return PlannedRun(f"{variant}, seed {seed}", None, run_dir, run_dir / "c.yaml",
                      tags={"variant": variant, "seed": seed})


def test_the_report_by_hand(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "s", "variants": {"L100": [], "F": []}, "seeds": [0, 1, 2],
                            "metrics": ["le", "clean_top1", "om"]})
    runs = [_fake_run(tmp_path, "L100", s, le) for s, le in enumerate([0.2, 0.3, 0.4])]
    runs += [_fake_run(tmp_path, "F", s, le, ["all-on masks"] if s == 2 else None)
             for s, le in enumerate([0.5, 0.7, 0.6])]
    data = collect(cfg, runs, "L100")
    f = data["variants"]["F"]["metrics"]["le"]
    assert f["summary"]["mean"] == pytest.approx(0.6) and f["summary"]["sd"] == pytest.approx(0.1)
    assert f["summary"]["high"] == pytest.approx(0.6 + 4.302653 * 0.1 / 3 ** 0.5, abs=1e-6)
    d = f["paired_difference"]  # 0.3, 0.4, 0.2
    assert d["mean"] == pytest.approx(0.3) and d["sd"] == pytest.approx(0.1) and d["n"] == 3
    assert data["variants"]["L100"]["metrics"]["le"]["paired_difference"] is None
    assert data["variants"]["F"]["metrics"]["clean_top1"]["seeds"] == {"0": 90.0, "1": 91.0, "2": 92.0}
    assert "om" not in data["variants"]["F"]["metrics"] and data["centre_box_le"] == 0.738
    text = markdown(data, cfg)
    # the sd's interval: 0.1 * sqrt(2 / 7.377759) ... 0.1 * sqrt(2 / 0.0506356) (chi-square, 2 df)
    assert ("| F | 0.600 ± 0.100 | 0.352 … 0.848 | 0.052 … 0.628 | 0.500 | 0.700 | 0.600† | +0.300 ± 0.100 "
            "| 0.052 … 0.548 |") in text
    assert "- F seed 2: all-on masks" in text and "### OM" not in text


def test_percent_metrics_get_one_decimal_and_a_title(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "s", "variants": {"a": []}, "seeds": [0, 1], "metrics": ["pxap", "road"]})
    runs = []
    for seed, (pxap, road) in enumerate([(70.0, 0.40), (72.0, 0.41)]):
        run = _fake_run(tmp_path, "a", seed, 0.2)
        path = run.run_dir / "eval" / "metrics.json"
        payload = json.loads(path.read_text())
        payload["results"]["casm"].update({"pxap": pxap, "road": road})
        path.write_text(json.dumps(payload))
        runs.append(run)
    text = markdown(collect(cfg, runs, "a"), cfg)
    assert "### PxAP % (pixel average precision) (higher is better)" in text
    assert "| a | 71.0 ± 1.4 |" in text and "| a | 0.405 ± 0.007 |" in text


def test_every_method_beside_the_masker_is_summarized_over_seeds_by_hand(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "s", "variants": {"a": []}, "seeds": [0, 1], "metrics": ["le"]})
    runs = []
    for seed, (casm_le, cam_le) in enumerate([(0.2, 0.5), (0.4, 0.3)]):
        run = _fake_run(tmp_path, "a", seed, casm_le)
        path = run.run_dir / "eval" / "metrics.json"
        payload = json.loads(path.read_text())
        payload["results"]["cam"] = {"le": cam_le}
        payload["ranking"] = {"mean_rank": {"casm": 1.0 + seed, "cam": 2.0 - seed}}
        path.write_text(json.dumps(payload))
        runs.append(run)
    data = collect(cfg, runs, "a")
    rows = data["variants"]["a"]["methods"]
    assert rows["cam"]["le"]["seeds"] == {"0": 0.5, "1": 0.3} and rows["cam"]["le"]["summary"]["mean"] == 0.4
    assert rows["casm"]["mean_rank"]["summary"]["mean"] == pytest.approx(1.5)
    text = markdown(data, cfg)
    assert "### Every method over seeds: a" in text
    assert "| casm | 1.50 ± 0.71 | 0.300 ± 0.141 |" in text and "| cam | 1.50 ± 0.71 | 0.400 ± 0.141 |" in text
    assert "masked images" not in text  # no judge in these evaluations: no judged table


def test_every_methods_masked_images_are_judged_over_seeds_by_hand(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "s", "variants": {"a": []}, "seeds": [0, 1], "metrics": ["le"]})
    runs = []
    for seed, (casm_out, rise_out) in enumerate([(8.0, 14.0), (10.0, 18.0)]):
        run = _fake_run(tmp_path, "a", seed, 0.2)
        path = run.run_dir / "eval" / "metrics.json"
        payload = json.loads(path.read_text())
        payload["results"]["casm"].update({"images": 500, "acc_masked_in@judge": 96.0,
                                           "acc_masked_out@judge": casm_out})
        payload["results"]["rise"] = {"le": 0.9, "images": 64, "acc_masked_in@judge": 90.0 + seed,
                                      "acc_masked_out@judge": rise_out}
        payload["results"]["full_image"] = {"acc_masked_out@judge": 9.0}  # a yardstick, not a method: no row
        payload["ranking"] = {"mean_rank": {"casm": 1.0, "rise": 2.0}}
        path.write_text(json.dumps(payload))
        runs.append(run)
    text = markdown(collect(cfg, runs, "a"), cfg)
    assert "### Every method's masked images, the judge's top-1 %: a (mean ± sd over seeds 0, 1)" in text
    # no inpainted column; rise has no mask mean
    assert "| method | images | share marked salient | salient part kept ↑ | salient part removed ↓ |" in text
    # casm: out 8, 10 -> 9.0 ± 1.4; rise: in 90, 91 -> 90.5 ± 0.7, out 14, 18 -> 16.0 ± 2.8, on its 64 images
    assert "| casm | 500 | 0.200 ± 0.000 | 96.0 ± 0.0 | 9.0 ± 1.4 |" in text
    assert "| rise | 64 | — | 90.5 ± 0.7 | 16.0 ± 2.8 |" in text
    assert "| full_image |" not in text


@pytest.mark.slow
def test_submitit_runs_the_trainings_as_jobs(tmp_path):
    """submitit's local cluster (what SLURM would do, as processes here): every run its own job."""
    pytest.importorskip("submitit")
    path = _study_file(tmp_path, variants={"a": []}, seeds=[0], launcher="submitit",
                       submitit={"cluster": "local", "timeout_min": 10})
    cfg, resolved = load_study(path)
    report = Study(cfg, resolved).run(progress=False, log=lambda m: None)
    root = tmp_path / "out" / "tiny"
    assert (root / "runs" / "a" / "seed0" / "finished.json").is_file()
    assert list((root / "submitit").glob("*_log.out"))
    le = json.loads((report / "study.json").read_text())["variants"]["a"]["metrics"]["le"]["summary"]
    assert le["n"] == 1 and le["sd"] is None


def test_every_variants_masks_side_by_side(tmp_path, capsys):
    """examples/study_masks.py: each variant's masker of one seed on the same images, one column each;
    a seed the study has not trained is one error line."""
    import importlib.util

    import cv2

    from casm.sanity.attacks import TILE

    spec = importlib.util.spec_from_file_location("study_masks", CONFIG_DIR.parent.parent / "examples" /
                                                  "study_masks.py")
    study_masks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_masks)
    path = _study_file(tmp_path, seeds=[0], variants={"a": [], "b": ["casm.thinning=F"]})
    for run in _study(path).plan():  # the trainings only: the figure needs no evaluation
        write_config(run, "the test")
        assert main(run.train_argv()) == 0
    assert study_masks.main([str(path), "--rows", "3"]) == 0
    figure = cv2.imread(str(tmp_path / "out" / "tiny" / "report" / "masks_seed0.png"))
    assert figure.shape[:2] == (18 + 3 * TILE, 3 * TILE)  # a title row; image, a, b
    assert study_masks.main([str(path), "--seed", "5"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error:")
