"""``ondevice classify`` end to end on digits-cnn: the CLI, discovery, device-only, a lost edge,
a refusal that ends the run. Real edge-server processes, real onnxruntime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _edge import SITE, EdgeProc, edge_server

from ondevice.common.dnn_profile import load_dnn
from ondevice.dnn.classify import TaskRecord
from ondevice.dnn.run import ClassifyRequest, run_classify


@pytest.fixture(scope="module")
def dnn_edge(digits_dnn: Path) -> EdgeProc:
    with edge_server(None, "--dnn", str(digits_dnn)) as e:
        yield e


def _digit(digits_dnn: Path, k: int) -> tuple[np.ndarray, int]:
    from sklearn.datasets import load_digits

    d = load_digits()
    row = load_dnn(digits_dnn).eval_indices[k]
    return d.images[row].astype(np.uint8), int(d.target[row])


def _cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ondevice.cli", "classify", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_cli_one_image_npy_and_png(dnn_edge: EdgeProc, digits_dnn: Path,
                                   tmp_path: Path) -> None:
    from PIL import Image

    img, label = _digit(digits_dnn, 3)
    np.save(tmp_path / "d.npy", img)
    Image.fromarray((img.astype(int) * 255 // 16).astype(np.uint8)).save(tmp_path / "d.png")
    for name in ("d.npy", "d.png"):
        out = _cli("--dnn", str(digits_dnn), "--edge", dnn_edge.url, "--image",
                   str(tmp_path / name), "--policy", "fixed-split", "--split", "2",
                   "--channel", "emulated:bw=1,seed=1", "--deadline-ms", "200", "--json")
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout.strip().splitlines()[-1])
        (task,) = rep["tasks"]
        assert task["prediction"] == label and task["split"] == "s2" and task["deadline_met"]
        assert task["packets"] >= 1 and task["bytes_sent"] == 512 and task["energy_j"] > 0
        assert rep["summary"]["energy_source"] == "modelled" and rep["edge"] == dnn_edge.url
        assert "task    0:" in out.stderr and "policy     fixed-split" in out.stderr


def test_cli_device_only_and_errors(digits_dnn: Path, tmp_path: Path) -> None:
    out = _cli("--dnn", str(digits_dnn), "--dataset", "digits", "--limit", "30", "--policy",
               "device-only", "--quiet", "--no-discover")
    assert out.returncode == 0, out.stderr
    assert "splits device 30" in out.stdout and "deadline misses 0.0%" in out.stdout
    acc = float(out.stdout.split("top1-accuracy ")[1].split()[0])
    assert acc >= 0.95
    bad = _cli("--dnn", str(tmp_path), "--dataset", "digits", "--no-discover")
    assert bad.returncode == 2 and "no profile.json" in bad.stderr
    bad = _cli("--dnn", str(digits_dnn), "--dataset", "digits", "--channel", "emulated:bw=x",
               "--no-discover")
    assert bad.returncode == 1 and "not a number" in bad.stderr


async def test_discovers_the_edge_on_loopback(digits_dnn: Path) -> None:
    with edge_server(None, "--dnn", str(digits_dnn), advertise=True) as e:
        rep = await run_classify(ClassifyRequest(
            dnn_dir=digits_dnn, dataset="digits", limit=3, policy="edge-only",
            interfaces=("127.0.0.1",), site=SITE, browse_s=2.0))
    assert rep.edge == e.url
    assert all(t.split == "raw" and t.prediction == t.label for t in rep.tasks)


async def test_lost_edge_mid_run_answers_every_task(digits_dnn: Path) -> None:
    """SIGKILL the edge after the third task: every task still gets an answer (the device's
    own from then on), the lost ones are flagged, and the device keeps its deadlines."""
    with edge_server(None, "--dnn", str(digits_dnn)) as e:

        def kill_after(rec: TaskRecord) -> None:
            if rec.index == 2:
                e.kill()

        rep = await run_classify(ClassifyRequest(
            dnn_dir=digits_dnn, edge=e.url, dataset="digits", limit=12, policy="enachi",
            split=2, channel="emulated:bw=1,seed=2,coherence_ms=5", deadline_ms=60.0),
            on_task=kill_after)
    tasks = rep.tasks
    assert [t.degraded for t in tasks[:3]] == [False] * 3
    assert all(t.degraded for t in tasks[3:])
    assert all(t.prediction is not None for t in tasks)
    assert sum(t.correct for t in tasks) >= 10
    assert tasks[3].error and "edge lost" in tasks[3].error
    assert all(t.split == "device" for t in tasks[4:])  # no edge to reconnect to
    assert rep.summary["degraded_tasks"] == 9 and rep.errors


def test_an_edge_serving_another_model_ends_the_run(dnn_edge: EdgeProc, digits_dnn: Path,
                                                      tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(digits_dnn, other)
    prof = json.loads((other / "profile.json").read_text())
    order = prof["splits"][1]["feature"]["importance_order"]
    order[0], order[1] = order[1], order[0]  # a different export of "the same" model
    (other / "profile.json").write_text(json.dumps(prof))
    out = _cli("--dnn", str(other), "--edge", dnn_edge.url, "--dataset", "digits", "--limit",
               "2", "--policy", "edge-only")
    assert out.returncode == 1 and "unknown-model" in out.stderr, out.stderr


async def test_edge_lost_mid_task_keeps_its_partial_answer(digits_dnn: Path) -> None:
    """SIGKILL the edge while a task streams over a slow link: the task answers with what the
    edge said about the packets it got (a partial feature), flagged."""
    import asyncio

    import aiohttp

    async def kill_once_streaming(e: EdgeProc) -> None:
        async with aiohttp.ClientSession() as http:
            while True:  # the task is open on the edge: let a few packets through, then kill
                async with http.get(e.url + "/v1/info") as r:
                    if (await r.json())["sessions"]:
                        break
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.35)
        e.kill()

    with edge_server(None, "--dnn", str(digits_dnn)) as e:
        killer = asyncio.create_task(kill_once_streaming(e))
        rep = await run_classify(ClassifyRequest(
            dnn_dir=digits_dnn, edge=e.url, dataset="digits", limit=1, policy="constant-power",
            split=2, channel="emulated:bw=0.02,snr_db=10,fading=none", deadline_ms=800.0))
        await killer
    (task,) = rep.tasks
    assert task.degraded and task.stop == "edge-lost" and "edge lost" in (task.error or "")
    assert 0.0 < task.fraction < 1.0 and task.prediction is not None
