"""Fault injection in configs: YAML syntax errors, inherit cycles, wrong types, out-of-range values,
unknown names. Each is one line naming the key or file (and the fix where there is one), exit code 2,
and nothing is built or written: no run folder appears."""

from __future__ import annotations

import re

import pytest

from casm.cli import main as cli_main
from casm.cli import reports_user_errors
from casm.errors import UserError

YAML_FILES = {  # file name -> (text, expected message); files may inherit from each other
    "syntax.yaml": ("data:\n  batch_size: [1, 2\n", r"syntax\.yaml: not valid YAML.*line"),
    "tabs.yaml": ("data:\n\tbatch_size: 8\n", r"tabs\.yaml: not valid YAML"),
    "cycle_a.yaml": ("inherit: cycle_b.yaml\n", r"cycle_a\.yaml: inherits itself"),
    "self.yaml": ("inherit: self.yaml\n", r"self\.yaml: inherits itself"),
    "missing_parent.yaml": ("inherit: nowhere.yaml\n", r"nowhere\.yaml"),
    "wrong_type.yaml": ("data:\n  batch_size: abc\n", r"wrong_type\.yaml: bad value for data\.batch_size"),
    "typo.yaml": ("casm:\n  tinning: F\n", r"typo\.yaml.*casm\.tinning.*did you mean casm\.thinning"),
    "a_list.yaml": ("- data\n- model\n", r"a_list\.yaml"),
}
SUPPORT_FILES = {"cycle_b.yaml": "inherit: cycle_a.yaml\n"}

OVERRIDES = [  # (override, expected message)
    ("casm.p_pool=2", r"casm\.p_pool=2\.0 must be in \[0, 1\]"),
    ("data.batch_size=0", r"data\.batch_size=0 must be above 0"),
    ("data.batch_size=abc", r"bad value for data\.batch_size"),
    ("data.image_size=0", r"data\.image_size=0"),
    ("casm.pool_size=-1", r"casm\.pool_size=-1"),
    ("casm.snapshot_every=0", r"casm\.snapshot_every=0"),
    ("casm.lambda_r=-5", r"casm\.lambda_r=-5"),
    ("casm.divergence_loss=0", r"casm\.divergence_loss=0"),
    ("model.width=0", r"model\.width=0"),
    ("trainer.max_epochs=-3", r"trainer\.max_epochs=-3"),
    ("optim.classifier_lr=-1", r"optim\.classifier_lr=-1"),
    ("casm.thinning=L10", r"casm\.thinning='L10' is not one of"),
    ("model.arch=resnet7", r"model\.arch='resnet7' is not one of"),
    ("data.bogus=1", r"unknown config key 'data\.bogus'"),
    ("casm.thinning", r"not of the form key=value"),
    ("trainer.precision=16-mixed", r"trainer\.precision=16-mixed is not supported.*bf16-mixed"),
    ("trainer.num_nodes=0", r"trainer\.num_nodes=0 must be above 0"),
    ("casm.lambda_r=nan", r"casm\.lambda_r=nan must be a finite number"),
    ("casm.lambda_r=inf", r"casm\.lambda_r=inf must be a finite number"),
    ("optim.classifier_lr=nan", r"optim\.classifier_lr=nan must be a finite number"),
    ("optim.masker_lr=-inf", r"optim\.masker_lr=-inf must be a finite number"),
    ("casm.target_area=nan", r"casm\.target_area=nan must be a finite number"),
    ("data.image_size=1", r"data\.image_size=1 must be at least 32 \(a ResNet reduces its input 32-fold"),
    ("data.image_size=7", r"data\.image_size=7 must be at least 32"),
    ("data.include_classes=[0,0]", r"data\.include_classes=\['0', '0'\] names 0 more than once"),
    ("data.exclude_classes=[a,b,a]", r"data\.exclude_classes=.* names a more than once"),
]


def _run(argv, capsys):
    code = cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("name", list(YAML_FILES))
def test_a_broken_yaml_is_one_line_naming_the_file(tmp_path, capsys, name):
    for file, text in {**{k: v[0] for k, v in YAML_FILES.items()}, **SUPPORT_FILES}.items():
        (tmp_path / file).write_text(text)
    code, err = _run(["train", "--config", str(tmp_path / name), f"logging.out_dir={tmp_path / 'runs'}"], capsys)
    assert code == 2 and len(err) == 1 and re.search(YAML_FILES[name][1], err[0]), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override,message", OVERRIDES)
def test_a_bad_override_is_one_line_naming_the_key_before_anything_is_written(tmp_path, capsys, override, message):
    code, err = _run(["train", override, f"logging.out_dir={tmp_path / 'runs'}"], capsys)
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "runs").exists()


def test_a_bad_evaluation_override_is_one_line(trained_checkpoint, tmp_path, capsys):
    code, err = _run(["evaluate", "--checkpoint", str(trained_checkpoint), "methods=[casm,gradcom]",
                      f"out_dir={tmp_path / 'eval'}"], capsys)
    assert code == 2 and len(err) == 1 and "gradcom" in err[0]
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("raised,code,one_line", [
    (UserError("data.root=/x: no such folder"), 2, True),
    (FileNotFoundError("checkpoint not found: x.ckpt"), 2, True),
    (ValueError("an internal invariant broke"), 1, False),  # a bug, even though it is a ValueError
    (KeyError("pool"), 1, False),
])
def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys, raised, code, one_line):
    @reports_user_errors
    def command(argv):
        raise raised

    assert command([]) == code
    err = capsys.readouterr().err.strip().splitlines()
    if one_line:
        assert err == [f"error: {raised.args[0]}"]
    else:
        assert err[0].startswith("Traceback") and "internal error in casm (a bug" in err[-1], err


@pytest.mark.parametrize("env,speaks", [({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"RANK": "1"}, False),
                                        ({"SLURM_PROCID": "3"}, False), ({"LOCAL_RANK": "1"}, False),
                                        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False)])
def test_only_rank_zero_writes_the_closing_lines(monkeypatch, env, speaks):
    from casm import cli

    for key in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.speaks() is speaks
