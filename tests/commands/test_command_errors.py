"""Every training command answers a user's mistake with one line and exit status 2, never a traceback."""

from __future__ import annotations

import importlib

import pytest

from training._errors import USER_ERROR_STATUS, USER_ERRORS, report_user_error


def _cases(tmp):
    missing = str(tmp / "does-not-exist")
    return {
        "prepare": ["--data", missing, "--out", str(tmp / "cache")],
        "train": ["--config", missing + ".toml"],
        "train_init": ["--set", f"init_from={missing}", "--out", str(tmp / "run")],
        "pretrain": ["--cache", missing, "--set", "epochs=1", "--out", str(tmp / "pretrain")],
        "tune": ["--config", missing + ".toml", "--data", missing, "--out", str(tmp / "tune")],
        "ensemble": ["--members", missing, missing + "2", "--out", str(tmp / "ens")],
        "evaluate": ["--bundle", missing, "--data", missing],
        "fit_ood": ["--bundle", missing, "--data", missing],
        "predict": ["--bundle", missing, "--images", missing, "--out", str(tmp / "out.csv")],
        "predict_merge": ["--merge", missing + ".csv", "--out", str(tmp / "out.csv")],
        "experiment": ["--grid", missing + ".toml", "--data", missing, "--doc", str(tmp / "experiments.md")],
    }


@pytest.mark.parametrize("command", ["prepare", "pretrain", "train", "train_init", "tune", "ensemble", "evaluate", "fit_ood", "predict", "predict_merge",
                                     "experiment"])
def test_missing_input_is_one_line_and_status_2(command, tmp_path, capsys):
    main = importlib.import_module(f"training.{command.removesuffix('_merge').removesuffix('_init')}").main
    assert main(_cases(tmp_path)[command]) == USER_ERROR_STATUS == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "does-not-exist" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "ens").exists() and not (tmp_path / "run").exists()


def test_user_errors_are_value_and_os_errors_only(capsys):
    from cxr_core.errors import DataFormatError, ImageReadError

    assert issubclass(DataFormatError, USER_ERRORS) and issubclass(ImageReadError, USER_ERRORS)
    assert issubclass(PermissionError, USER_ERRORS)
    assert not issubclass(KeyError, USER_ERRORS) and not issubclass(TypeError, USER_ERRORS)  # defects keep their traceback
    assert report_user_error(PermissionError("cannot write runs/x")) == 2
    assert capsys.readouterr().err == "error: cannot write runs/x\n"
