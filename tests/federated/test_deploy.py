"""Real separate processes on loopback, and what crosses the wire between a site and the server.

One deployment (a SuperLink, two SuperNode processes, ``flwr run``) with a TCP proxy between
each SuperNode and the SuperLink that records every byte both ways. Then: the run finished;
no window of any site image's file bytes, decoded pixels or preprocessed tensor is in the
capture; the global model's parameter bytes are (the capture is meaningful); and what the
sites sent is about the parameters' size per round.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.federated.conftest import tiny_config

WINDOW = 48  # bytes: long enough that a chance match in ~MBs of capture is impossible


class RecordingProxy:
    """Forwards 127.0.0.1:port to ``target``; keeps every byte (``up``: towards the target)."""

    def __init__(self, target: int):
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up, self.down = bytearray(), bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, self.up),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.down),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    record.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


def request_bodies(capture: bytes, path: str) -> int:
    """Sum of the Content-Length of the HTTP requests to ``path`` in a capture."""
    total = 0
    for match in re.finditer(rb"POST (\S+) HTTP/1.1\r\n(.*?)\r\n\r\n", capture, re.S):
        length = re.search(rb"(?i)content-length: (\d+)", match.group(2))
        if match.group(1).decode() == path and length:
            total += int(length.group(1))
    return total


def image_windows(folder: Path, size: int) -> list[bytes]:
    """Windows of every image's file bytes, decoded pixels and preprocessed float tensor."""
    from skinedge.data import PreprocessConfig, build_eval_transform, load_rgb

    transform = build_eval_transform(PreprocessConfig(input_size=size))
    windows = []
    for path in sorted((folder / "images").glob("*.jpg")):
        raw = path.read_bytes()
        pixels = np.asarray(load_rgb(path, min_side=1)).tobytes()
        tensor = transform(load_rgb(path, min_side=1)).numpy().astype(np.float32).tobytes()
        for blob in (raw, pixels, tensor):
            for start in (len(blob) // 4, len(blob) // 2, 3 * len(blob) // 4):
                windows.append(blob[start:start + WINDOW])
    return windows


@pytest.mark.slow
def test_separate_processes_only_parameters_cross_the_wire(tiny_sites, tmp_path):
    from skinedge.federated import task
    from skinedge.federated.deploy import deploy_federation, free_port
    from skinedge.models import load_checkpoint

    sites = tiny_sites[:2]
    cfg = tiny_config(sites, rounds=1)
    superlink = free_port()
    proxies = {f"site{i}": RecordingProxy(superlink) for i in range(2)}
    try:
        summary = deploy_federation(
            cfg, tmp_path / "run", timeout=240, superlink_port=superlink,
            site_addresses={name: f"127.0.0.1:{p.port}" for name, p in proxies.items()})
    finally:
        for proxy in proxies.values():
            proxy.close()
    assert summary["rounds"] == 1 and summary["rounds_without_sites"] == []
    logs = tmp_path / "run" / "logs"
    assert {"superlink.log", "supernode-site0.log", "supernode-site1.log"} <= {
        p.name for p in logs.iterdir()}

    params = summary["parameters_bytes"]
    for name, proxy in proxies.items():
        up, down = bytes(proxy.up), bytes(proxy.down)
        # What a site sent: the bodies of its push-object requests are one set of parameters
        # (its update) plus metrics; HTTP headers (one request per array: ~1 kB each with the
        # node's signature) come on top.
        pushed = request_bodies(up, "/v1/fleet/push-object")
        assert params <= pushed < 1.1 * params + 20_000, (name, pushed, params)
        assert len(up) < 3 * params + 500_000, (name, len(up), params)
        assert len(down) >= params, (name, len(down), params)
        for folder in sites:  # no site's image bytes in either direction
            hits = [w for w in image_windows(folder, cfg.preprocess.input_size)
                    if w in up or w in down]
            assert not hits, f"{len(hits)} image windows of {folder} crossed the wire ({name})"
    # The capture is meaningful: the initial global parameters went down in the clear.
    model, _ = task.build_model(cfg)
    initial = task.exchanged_state(model, cfg)
    largest = max(initial.values(), key=lambda a: a.size).tobytes()
    assert largest[1000:1000 + WINDOW] in bytes(proxies["site0"].down)
    # ... and the final model is the one the server saved.
    final, card = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert card.training["federated"] is True


def test_a_site_replies_only_parameter_arrays_and_scalar_metrics(tiny_sites, tmp_path):
    """Call the ClientApp's train handler directly and inspect its reply."""
    import os

    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from skinedge.federated import client_app, task
    from skinedge.federated.config import write_federation

    cfg = tiny_config(tiny_sites, rounds=1)
    federation = write_federation(cfg, tmp_path)
    model, _ = task.build_model(cfg)
    state = task.exchanged_state(model, cfg)
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # a ServerApp's
    msg = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in state.items()}),
                              "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, node_config={"site": "site1"}, state=RecordDict(),
                      run_config={"federation": str(federation)})
    old = os.environ.pop("SKINEDGE_FEDERATION", None)
    try:
        reply = client_app.train(msg, context)
    finally:
        if old is not None:
            os.environ["SKINEDGE_FEDERATION"] = old
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    content = reply.content
    assert list(content.array_records) == ["arrays"]
    arrays = content.array_records["arrays"]
    assert list(arrays.keys()) == list(state)  # exactly the model's exchanged entries
    assert set(state) <= set(model.state_dict())
    for key, value in zip(arrays.keys(), arrays.to_numpy_ndarrays()):
        assert value.dtype == np.float32 and value.shape == state[key].shape
    assert list(content.config_records) == []
    (metrics,) = content.metric_records.values()
    assert set(metrics) == {"train-loss", "num-examples", "unit-weight", "update-norm"}
    assert all(isinstance(v, (int, float)) for v in metrics.values())
