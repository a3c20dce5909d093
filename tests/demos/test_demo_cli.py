"""``moezoo demo``: which model it shows, its one-line errors, and the real command serving a page on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from moezoo.cli import main


def _error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, reason", [
    (["--task", "image-classification", "--weights", "mowst-gcn-cora"],
     r"weights mowst-gcn-cora holds a model of graph/mowst-gcn, not of --task image-classification"),
    (["--task", "image-clasification"], r"unknown task 'image-clasification'. Did you mean 'image-classification'"),
    (["--weights", "moe-vit-digit"], r"unknown weights 'moe-vit-digit'. Did you mean 'moe-vit-digits'"),
    (["--weights", "moe-vit-digits", "--ckpt_path", "x.ckpt"], r"give --weights or --ckpt_path, not both"),
    (["--ckpt_path", "missing.ckpt"], r"ckpt_path: no such checkpoint file: missing.ckpt"),
    (["--task", "image-classification", "--share", "maybe"], r"--share: .*expected true or false, got 'maybe'"),
    ([], r"give --task NAME"),
])
def test_a_wrong_demo_command_is_one_line_naming_what_is_wrong(capsys, argv, reason):
    assert re.search(reason, _error(capsys, *argv))


def test_a_task_without_registered_weights_trains_its_embedded_default_once(tmp_path, monkeypatch, capsys,
                                                                           one_thread):
    import torch

    from moezoo.demos import load_demo_model
    from moezoo.tasks.graph import NodeClassifier

    monkeypatch.setenv("MOEZOO_CACHE", str(tmp_path))
    first = load_demo_model("graph/gcn")
    assert "no registered weights of graph/gcn: training its embedded default once" in capsys.readouterr().out
    run = tmp_path / "demo-runs" / "graph-gcn"
    assert isinstance(first.model, NodeClassifier) and first.task == "graph/gcn" and str(run) in first.source
    record = json.loads((run / "metrics.json").read_text())
    assert record["task"] == "graph/gcn" and record["test/acc"] > 0.7  # GCN on Cora's public split: about 0.81
    again = load_demo_model("graph/gcn")  # reused: nothing trains, the same weights
    assert "training" not in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at ``port``, from the kernel's table (/proc/net/tcp)."""
    found = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_the_command_serves_the_family_demo_on_localhost(tmp_path):
    from gradio_client import Client

    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1",
           "MPLCONFIGDIR": str(tmp_path / "mpl"), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    command = [sys.executable, "-m", "moezoo.cli", "demo", "--task", "image-classification", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = server.stdout.readline()
        assert first.strip() == "moezoo demo: image-classification from weights moe-vit-digits"
        deadline, url = time.time() + 120, f"http://127.0.0.1:{port}/"
        while True:
            try:
                client = Client(url, verbose=False)
                break
            except Exception:
                assert server.poll() is None and time.time() < deadline, "the demo did not come up"
                time.sleep(0.5)
        _, status = client.predict(0, api_name="/test_digit")
        assert status == "digit 0 of the bundled set: a 0"
        assert _listening_addresses(port) == {"127.0.0.1"}  # this machine only, not 0.0.0.0
    finally:
        server.terminate()
        server.wait(timeout=30)
