"""Pretrained weights by name (``coco``, ``imagenet``) and their download cache
(:mod:`detlit.model.download`), against a real HTTP server on 127.0.0.1 that supports Range
requests, can drop the connection half-way through a file, and records every request."""

from __future__ import annotations

import hashlib
import http.server
import logging
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from detlit.compat import get_cfg
from detlit.errors import ConfigError, WeightsError
from detlit.model.config import DEFAULT_CONFIG, MENU, build_d2_config, merge_config_file
from detlit.model.download import DETECTRON2_URL, cache_file, fetch
from detlit.model.weights import load_pretrained, weights_source

from .conftest import REPO, tiny_cli_args, tiny_module

COCO_R50_FPN = "COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"
HTML = b"<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n"


@dataclass
class Served:
    """What the test server serves, how, and the requests it saw: (path, Range header or None)."""

    files: dict[str, bytes] = field(default_factory=dict)
    mode: str = "normal"  # normal, drop-once, drop-always, ignore-range, html, no-length
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""


def handler_for(served: Served) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            asked = self.headers.get("Range")
            served.requests.append((self.path, asked))
            body = served.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            if served.mode == "html":
                self._send(200, HTML, {"Content-Type": "text/html; charset=utf-8"})
                return
            start = int(asked.removeprefix("bytes=").removesuffix("-")) if asked else 0
            if served.mode == "ignore-range" or not asked:
                start = 0
            part = body[start:]
            headers = {"Content-Type": "application/octet-stream"}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            if served.mode != "no-length":
                headers["Content-Length"] = str(len(part))
            if served.mode == "drop-always" or (served.mode == "drop-once" and len(served.requests) == 1):
                part = part[: len(part) // 2]  # the connection closes half-way through
            self._send(206 if start else 200, part, headers)

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading (a refused download) resets the connection: expected here


@pytest.fixture(scope="module")
def tiny_pkl() -> bytes:
    """A detectron2 model-zoo style .pkl of the tiny model (3 classes): numpy arrays under "model"."""
    state = {k: v.numpy() for k, v in tiny_module().model.state_dict().items()}
    return pickle.dumps({"model": state, "__author__": "detlit test"}, protocol=2)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Served, Any]]:
    """The server, with detectron2's base URL pointed at it and the weights cache in tmp_path."""
    served = Served()
    httpd = QuietServer(("127.0.0.1", 0), handler_for(served))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("DETLIT_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("DETLIT_WEIGHTS_URL", served.url + "/")
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            thread.join()
            stopped = True

    try:
        yield served, stop
    finally:
        stop()


def cached_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "weights"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_first_download_is_the_served_file_with_progress_then_the_cache_answers_alone(
    server: tuple[Served, Any], tmp_path: Path, tiny_pkl: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    served, stop = server
    served.files["/models/tiny.pkl"] = tiny_pkl
    with caplog.at_level(logging.INFO, logger="detlit"):
        path = fetch(f"{served.url}/models/tiny.pkl")
    assert path.read_bytes() == tiny_pkl
    assert path == tmp_path / "weights" / f"127.0.0.1_{served.url.rsplit(':', 1)[1]}" / "models" / "tiny.pkl"
    digest = hashlib.sha256(tiny_pkl).hexdigest()
    assert path.with_name("tiny.pkl.sha256").read_text() == f"{digest}  tiny.pkl\n"
    assert cached_files(tmp_path) == [
        f"{path.parent.relative_to(tmp_path / 'weights')}/{n}" for n in ("tiny.pkl", "tiny.pkl.sha256")
    ]
    progress = [r.getMessage() for r in caplog.records if "MB/s" in r.getMessage()]
    size = len(tiny_pkl) / 1e6
    assert len(progress) >= 10, progress  # a line at every tenth of the file, and one at the end
    assert progress[-1].startswith(f"downloading tiny.pkl: {size:.1f} of {size:.1f} MB (100%), ")
    assert served.requests == [("/models/tiny.pkl", None)]

    stop()  # the cache answers without any network call
    with caplog.at_level(logging.INFO, logger="detlit"):
        assert fetch(f"{served.url}/models/tiny.pkl") == path
    assert served.requests == [("/models/tiny.pkl", None)]
    assert f"found in the cache: {path} (sha256 {digest})" in caplog.text


def test_a_broken_connection_is_resumed_with_a_range_request(
    server: tuple[Served, Any], tmp_path: Path, tiny_pkl: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    served, _ = server
    served.files["/tiny.pkl"] = tiny_pkl
    served.mode = "drop-once"
    path = fetch(f"{served.url}/tiny.pkl")
    assert path.read_bytes() == tiny_pkl
    half = len(tiny_pkl) // 2
    assert served.requests == [("/tiny.pkl", None), ("/tiny.pkl", f"bytes={half}-")]
    assert f"broke at {half / 1e6:.1f} MB" in caplog.text
    assert not path.with_name("tiny.pkl.part").exists()


def test_a_download_broken_every_time_resumes_in_the_next_run(
    server: tuple[Served, Any], tmp_path: Path, tiny_pkl: bytes
) -> None:
    served, _ = server
    served.files["/tiny.pkl"] = tiny_pkl
    served.mode = "drop-always"
    target = cache_file(f"{served.url}/tiny.pkl")
    with pytest.raises(WeightsError, match=rf"broke at .* 3 times; run again to resume from {target}\.part, or"):
        fetch(f"{served.url}/tiny.pkl")
    partial = target.with_name("tiny.pkl.part")
    have = partial.stat().st_size
    assert 0 < have < len(tiny_pkl) and tiny_pkl.startswith(partial.read_bytes())
    assert not target.exists()
    served.mode, served.requests = "normal", []
    assert fetch(f"{served.url}/tiny.pkl").read_bytes() == tiny_pkl
    assert served.requests == [("/tiny.pkl", f"bytes={have}-")]


def test_a_server_that_ignores_range_sends_the_file_again(server: tuple[Served, Any], tiny_pkl: bytes) -> None:
    served, _ = server
    served.files["/tiny.pkl"] = tiny_pkl
    served.mode = "ignore-range"
    target = cache_file(f"{served.url}/tiny.pkl")
    target.parent.mkdir(parents=True)
    target.with_name("tiny.pkl.part").write_bytes(b"x" * 1000)  # not even the file's start
    assert fetch(f"{served.url}/tiny.pkl").read_bytes() == tiny_pkl
    assert served.requests == [("/tiny.pkl", "bytes=1000-")]


def test_404_is_one_sentence_and_leaves_nothing(server: tuple[Served, Any], tmp_path: Path) -> None:
    served, _ = server
    with pytest.raises(WeightsError) as raised:
        fetch(f"{served.url}/nope.pkl")
    target = cache_file(f"{served.url}/nope.pkl")
    assert str(raised.value) == (
        f"could not download weights {served.url}/nope.pkl: {served.url}/nope.pkl answered HTTP 404 (Not Found); "
        f"check the URL (model.weights, DETLIT_WEIGHTS_URL), or download the file yourself and place it at {target}"
    )
    assert not (tmp_path / "weights").exists()  # not even a folder


@pytest.mark.parametrize("mode", ["html", "html-body"])
def test_an_html_page_is_refused_and_leaves_nothing(server: tuple[Served, Any], tmp_path: Path, mode: str) -> None:
    served, _ = server
    served.files["/tiny.pkl"] = HTML
    served.mode = "html" if mode == "html" else "normal"  # text/html, or a page sent as octet-stream
    with pytest.raises(WeightsError, match=r"answered with an HTML page.*, not a weights file; check the URL"):
        fetch(f"{served.url}/tiny.pkl")
    assert not (tmp_path / "weights").exists()  # not even a folder


def test_sizes_beyond_the_limit_are_refused(server: tuple[Served, Any], tmp_path: Path, tiny_pkl: bytes) -> None:
    served, _ = server
    served.files["/tiny.pkl"] = tiny_pkl
    size = f"{len(tiny_pkl) / 1e6:.1f}"
    with pytest.raises(WeightsError, match=rf"announces {size} MB, more than the 1 MB a weights download may have"):
        fetch(f"{served.url}/tiny.pkl", limit=10**6)
    served.mode = "no-length"
    with pytest.raises(WeightsError, match=r"sent more than the 1 MB a weights download may have \(the partial file"):
        fetch(f"{served.url}/tiny.pkl", limit=10**6)
    assert not (tmp_path / "weights").exists()  # not even a folder


def test_a_changed_cached_file_is_one_sentence(server: tuple[Served, Any], tiny_pkl: bytes) -> None:
    served, _ = server
    served.files["/tiny.pkl"] = tiny_pkl
    path = fetch(f"{served.url}/tiny.pkl")
    path.write_bytes(tiny_pkl[:-1] + b"\x00")
    with pytest.raises(
        WeightsError,
        match=rf"weights file {path} \(cached for .*\) has changed since it was downloaded "
        r"\(sha256 [0-9a-f]{64}, expected [0-9a-f]{64}\); delete it and run again",
    ):
        fetch(f"{served.url}/tiny.pkl")
    path.unlink()
    assert fetch(f"{served.url}/tiny.pkl").read_bytes() == tiny_pkl


def test_a_pinned_sha256_is_checked(server: tuple[Served, Any], tmp_path: Path, tiny_pkl: bytes) -> None:
    served, _ = server
    served.files["/tiny.pkl"] = tiny_pkl
    wrong = "0" * 64
    with pytest.raises(WeightsError, match=rf"have sha256 [0-9a-f]{{64}}, not the {wrong} that model.weights pins"):
        fetch(f"{served.url}/tiny.pkl#sha256={wrong}")
    assert not (tmp_path / "weights").exists()  # not even a folder
    right = hashlib.sha256(tiny_pkl).hexdigest()
    assert fetch(f"{served.url}/tiny.pkl#sha256={right.upper()}").read_bytes() == tiny_pkl


def test_offline_without_the_file_says_where_to_place_it_and_a_placed_file_is_used(
    server: tuple[Served, Any], tmp_path: Path, tiny_pkl: bytes
) -> None:
    served, stop = server
    stop()
    source = f"detectron2://{COCO_R50_FPN}"
    target = tmp_path / "weights" / "detectron2" / COCO_R50_FPN
    with pytest.raises(WeightsError) as raised:
        fetch(source)
    assert str(raised.value).startswith(f"could not download weights {source} from {served.url}/{COCO_R50_FPN} (")
    assert str(raised.value).endswith(f"); download it once with network access, or place it at {target}")
    target.parent.mkdir(parents=True)
    target.write_bytes(tiny_pkl)  # placed by hand: used, and its sha256 recorded from now on
    assert fetch(source) == target
    assert target.with_name(target.name + ".sha256").read_text().startswith(hashlib.sha256(tiny_pkl).hexdigest())


def test_a_download_that_is_no_weights_file_leaves_the_cache(server: tuple[Served, Any], tmp_path: Path) -> None:
    served, _ = server
    served.files["/junk.pkl"] = b"\x00" * 5000
    with pytest.raises(WeightsError, match=r"could not read weights from .*junk\.pkl .*\(downloaded from .*; removed"):
        load_pretrained(tiny_module().model, f"{served.url}/junk.pkl")
    assert cached_files(tmp_path) == []


def test_the_mirror_must_be_an_http_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DETLIT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("DETLIT_WEIGHTS_URL", "file:///etc/")
    with pytest.raises(ConfigError, match=r"DETLIT_WEIGHTS_URL is 'file:///etc/'; give the http:// or https:// URL"):
        fetch(f"detectron2://{COCO_R50_FPN}")


def test_without_a_cache_folder_downloads_need_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DETLIT_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("DETLIT_CACHE_DIR", "off")
    with pytest.raises(ConfigError, match=r"DETLIT_CACHE_DIR is off, and downloaded weights need a folder"):
        fetch(f"detectron2://{COCO_R50_FPN}")


# --- names: coco, imagenet ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_name", "expected"),
    [
        (DEFAULT_CONFIG, COCO_R50_FPN),
        (
            "COCO-Detection/retinanet_R_50_FPN_3x.yaml",
            "COCO-Detection/retinanet_R_50_FPN_3x/190397829/model_final_5bd44e.pkl",
        ),
        (
            "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
            "Misc/cascade_mask_rcnn_R_50_FPN_3x/144998488/model_final_480dd8.pkl",
        ),
    ],
)
def test_coco_is_the_model_zoos_checkpoint_of_the_config(config_name: str, expected: str) -> None:
    cfg = build_d2_config(config_name, 3)
    assert weights_source("coco", config_name, cfg) == DETECTRON2_URL + expected


def test_coco_of_a_config_without_one_is_one_sentence(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"  # a detectron2 yaml of one's own: not in the model zoo
    with pytest.raises(WeightsError, match=r"model.weights coco names .*, and .*mine\.yaml is no model-zoo config;"):
        weights_source("coco", str(own), build_d2_config(DEFAULT_CONFIG, 3))


@pytest.mark.parametrize("config_name", MENU)
def test_imagenet_is_what_each_model_zoo_config_starts_from_and_every_menu_config_has_coco(config_name: str) -> None:
    cfg = build_d2_config(config_name, 3)
    own = get_cfg()
    merge_config_file(own, config_name)  # the config's own MODEL.WEIGHTS, which the model's cfg clears
    assert weights_source("imagenet", config_name, cfg) == own.MODEL.WEIGHTS
    assert weights_source("coco", config_name, cfg).startswith(DETECTRON2_URL + config_name.removesuffix(".yaml"))


def test_imagenet_for_a_resnet_18_is_one_sentence() -> None:
    with pytest.raises(WeightsError) as raised:
        weights_source("imagenet", DEFAULT_CONFIG, tiny_module().cfg)
    assert str(raised.value) == (
        "model.weights imagenet: detectron2's model zoo has ImageNet weights for ResNet-50, ResNet-101 and "
        "ResNeXt-101 32x8d backbones, and this model's backbone is a ResNet-18 (model.config_name "
        f"{DEFAULT_CONFIG}, model.overrides MODEL.RESNETS.*); set model.weights to a detectron2 .pkl/.pth file of "
        "its backbone, or null to train from scratch (with GroupNorm, as configs/sample_cpu.yaml)"
    )


def test_coco_weights_load_into_a_model_of_other_classes(
    server: tuple[Served, Any], tiny_pkl: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    served, _ = server
    served.files[f"/{COCO_R50_FPN}"] = tiny_pkl  # the tiny model's weights at the zoo's path, on the mirror
    five = {"num_classes": 5, "class_names": list("abcde"), "category_ids": [1, 2, 3, 4, 5]}
    module = tiny_module(weights="coco", **five)
    with caplog.at_level(logging.INFO, logger="detlit"):
        module.setup("fit")
    assert served.requests == [(f"/{COCO_R50_FPN}", None)]
    donor = pickle.loads(tiny_pkl)["model"]
    state = module.model.state_dict()
    assert torch.equal(
        state["proposal_generator.rpn_head.conv.weight"],
        torch.from_numpy(donor["proposal_generator.rpn_head.conv.weight"]),
    )
    assert state["roi_heads.box_predictor.cls_score.weight"].shape[0] == 6  # fresh: 5 classes + background
    assert not torch.equal(
        state["roi_heads.box_predictor.cls_score.weight"][:4],
        torch.from_numpy(donor["roi_heads.box_predictor.cls_score.weight"]),
    )
    assert (
        "re-initialised (shape differs, e.g. another number of classes): roi_heads.box_predictor.cls_score.weight"
        in caplog.text
    )
    assert "roi_heads.box_predictor.bbox_pred.weight (12, 64) -> (20, 64)" in caplog.text
    assert "has a ResNet-50 backbone and this model a ResNet-18 (model.overrides)" in caplog.text
    assert (
        f"model.weights coco: the model zoo's COCO-trained {DEFAULT_CONFIG}, {DETECTRON2_URL}{COCO_R50_FPN}"
        in caplog.text
    )


@pytest.mark.cli
def test_fit_downloads_weights_given_by_url(
    server: tuple[Served, Any], tmp_path: Path, tiny_pkl: bytes, sample_dir: Path
) -> None:
    served, _ = server
    served.files["/tiny.pkl"] = tiny_pkl
    args = [a for a in tiny_cli_args(sample_dir) if not a.startswith("--model.weights")]
    argv = [sys.executable, "-m", "detlit.fit", f"--config={REPO / 'configs' / 'sample_cpu.yaml'}", *args]
    argv += [f"--model.weights={served.url}/tiny.pkl", "--trainer.fast_dev_run=1"]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded pretrained weights from {served.url}/tiny.pkl" in result.stderr
    assert served.requests == [("/tiny.pkl", None)]
    assert cache_file(f"{served.url}/tiny.pkl").read_bytes() == tiny_pkl


@pytest.mark.parametrize("weights", ["", "  ", 5])
def test_weights_that_name_nothing_are_refused_at_start(weights: Any) -> None:
    with pytest.raises(
        ConfigError, match=r"model.weights is .*; give coco, imagenet, a URL, a .pkl/.pth/.ckpt file, or null"
    ):
        tiny_module(weights=weights)
