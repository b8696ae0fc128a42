"""Configs: composition, overrides and one-line errors for typos."""

import pytest

from casm.config import CONFIG_DIR, ConfigError, load_config


def test_defaults_and_overrides():
    cfg = load_config(None, ["casm.thinning=F", "trainer.max_epochs=3"])
    assert cfg.casm.thinning == "F" and cfg.trainer.max_epochs == 3 and cfg.model.arch == "resnet18"


@pytest.mark.parametrize("path", sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.parent.name != "studies"),
                         ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):  # (the study files: tests/test_study.py plans each)
    overrides = ["data.root=/data/imagenet"] if "imagenet" in path.read_text() else []
    load_config(path, overrides)


def test_experiment_inherits_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("casm:\n  thinning: FL\ntrainer:\n  max_epochs: 4\n")
    (tmp_path / "exp.yaml").write_text("inherit: base.yaml\ntrainer:\n  max_epochs: 7\n")
    cfg = load_config(tmp_path / "exp.yaml")
    assert cfg.casm.thinning == "FL" and cfg.trainer.max_epochs == 7


@pytest.mark.parametrize("override, suggestion", [
    ("casm.tinning=F", "casm.thinning"),
    ("trainer.max_epoch=3", "trainer.max_epochs"),
    ("lerning_rate=1", None),
])
def test_unknown_key_names_key_and_nearest(override, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert override.split("=")[0] in message and "\n" not in message
    if suggestion:
        assert f"did you mean {suggestion}" in message


def test_typo_in_a_yaml_file_names_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("masker:\n  haed: deconv\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'masker.haed'; did you mean masker.head"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("override, match", [
    ("casm.thinning=L10", "casm.thinning='L10' is not one of"),
    ("masker.head=unet", "masker.head='unet'"),
    ("trainer.max_epochs=many", "max_epochs"),
    ("casm.p_pool=1.5", "p_pool"),
    ("data.name=imagenet", "data.root"),
    ("masker.feature_layer=layer5", "masker.feature_layer='layer5'"),
    ("masker.feature_layer=layer3", "decoders"),  # the default casme head reads every layer
    ("optim.masker_lr_scaling=cubic", "optim.masker_lr_scaling='cubic' is not one of linear, sqrt, none"),
    ("trainer.max_val_images=100 trainer.limit_val_batches=3", "both cap validation"),
    ("casm.mask_logit_bound=4 masker.head=lfi", "needs a head whose mask is a sigmoid .*masker.head=lfi"),
])
def test_bad_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, override.split())


@pytest.mark.parametrize("override", ["data.crop_scale=[0.5,1", "unseen.eval_overrides=[methods=[casm],x=0]",
                                      "logging.name={a"])
def test_an_override_yaml_cannot_read_names_the_override(override):
    with pytest.raises(ConfigError, match=r"override '.*': its value is not valid YAML .*quote list items"):
        load_config(None, [override])


@pytest.mark.parametrize("cap, batch, batches", [(None, 16, 1.0), (100, 16, 7), (96, 32, 3), (1, 64, 1)])
def test_the_validation_image_cap_is_whole_global_batches(cap, batch, batches):
    from casm.training.run import validation_batches

    overrides = [f"data.batch_size={batch}"] + ([f"trainer.max_val_images={cap}"] if cap else [])
    assert validation_batches(load_config(None, overrides)) == batches


def test_cli_reports_config_errors_in_one_line(capsys):
    from casm.cli import train_main

    assert train_main(["casm.tinning=F"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "casm.thinning" in err and "\n" not in err


@pytest.mark.parametrize("override", ["casm.pool_size=-1", "casm.snapshot_every=0", "casm.snapshot_every=-2",
                                      "model.width=0", "trainer.max_epochs=-3", "data.image_size=0",
                                      "casm.lambda_r=-5", "data.batch_size=0", "optim.classifier_lr=-0.1",
                                      "trainer.max_val_images=0", "optim.lr_reference_batch=0",
                                      "casm.mask_logit_bound=0"])
def test_out_of_range_values_are_refused_before_anything_is_built(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key}=-?[0-9.]+ must be"):
        load_config(None, [override])


def test_long_error_texts_keep_their_end():
    from casm.errors import shorten

    text = "start " + "x" * 1000 + " the key at fault"
    short = shorten(text, 100)
    assert len(short) <= 100 and short.startswith("start") and short.endswith("the key at fault")
    assert shorten("a\nb  c") == "a b c"
