"""Files from someone else never run code and never expand without bound: the safe YAML reader,
the restricted unpickler, weights files (local and over HTTP) and detectron2 configs named by
``model.config_name``. Every crafted file would create a marker file if its code ran."""

from __future__ import annotations

import functools
import http.server
import os
import pickle
import re
import threading
import tracemalloc
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detlit.common import safe_yaml
from detlit.common.safe_pickle import load_pickle
from detlit.common.safe_yaml import RefusedInParser, load_yaml, read_yaml, register_cli_loader
from detlit.errors import ConfigError, WeightsError

from .corpus_untrusted import RunsCommand, laughs, laughs_flow, python_tag


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "MARKER-code-ran"
    yield path
    assert not path.exists(), "a crafted file ran code"


# --- YAML ---------------------------------------------------------------------------------------


def test_plain_yaml_with_aliases_and_merge_keys_loads_as_before() -> None:
    text = "base: &base {lr: 0.1, steps: [1, 2]}\nrun:\n  <<: *base\n  lr: 0.2\ncopy: *base\nwhen: 2024-01-02\n"
    assert load_yaml(text, "test") == {
        "base": {"lr": 0.1, "steps": [1, 2]},
        "run": {"lr": 0.2, "steps": [1, 2]},
        "copy": {"lr": 0.1, "steps": [1, 2]},
        "when": __import__("datetime").date(2024, 1, 2),
    }


@pytest.mark.parametrize(
    ("value", "written", "why"),
    [
        ("PYTHON", "!!python/object/apply:os.system", "would build a Python object"),
        ("!!python/name:os.system", "!!python/name:os.system", "would build a Python object"),
        ("!!python/object/new:subprocess.Popen [[ls]]", "!!python/object/new:subprocess.Popen", "Python object"),
        ("!local 3", "!local", "is not plain YAML"),
        ("!<tag:example.com,2024:thing> 3", "tag:example.com,2024:thing", "is not plain YAML"),
    ],
)
def test_tags_beyond_plain_yaml_are_refused_naming_source_line_and_tag(
    tmp_path: Path, marker: Path, value: str, written: str, why: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"a: 1\nb:\n  c: {python_tag(marker) if value == 'PYTHON' else value}\n")
    with pytest.raises(ConfigError) as caught:
        read_yaml(path, f"config {path}")
    message = str(caught.value)
    assert message.startswith(f"config {path} line 3 has the tag {written}, which") and why in message
    assert "\n" not in message


def test_billion_laughs_is_refused_from_its_events_before_anything_is_built() -> None:
    text = laughs()  # 10**9 strings once expanded, 640 bytes
    assert len(text) < 1000
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"^laughs expands to more than 100,000 values .*\(line 6\)"):
            load_yaml(text, "laughs")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, peak  # the expanded structure would be gigabytes


def test_expanded_size_counts_each_alias_as_its_anchor_s_whole_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    # root 1 + a (1 + 3) + b (1 + 2 * 4) + last (1 + 3 * 9) = 42 nodes once expanded
    text = "- &a [1, 2, 3]\n- &b [*a, *a]\n- [*b, *b, *b]\n"
    monkeypatch.setattr(safe_yaml, "MAX_NODES", 42)
    assert load_yaml(text, "t")[2] == [[[1, 2, 3]] * 2] * 3
    monkeypatch.setattr(safe_yaml, "MAX_NODES", 41)
    with pytest.raises(ConfigError, match="expands to more than 41 values"):
        load_yaml(text, "t")


def test_expanded_text_is_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    text = f"- &s {'x' * 1000}\n" + "".join("- *s\n" for _ in range(9))
    monkeypatch.setattr(safe_yaml, "MAX_TEXT", 10_000)
    assert len(load_yaml(text, "t")) == 10
    monkeypatch.setattr(safe_yaml, "MAX_TEXT", 9_999)
    with pytest.raises(ConfigError, match="9,999 characters"):
        load_yaml(text, "t")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &x [1, *x]\n", r"^t uses anchor &x inside itself \(line 1\)"),
        ("a: &x {b: {c: *x}}\n", r"^t uses anchor &x inside itself \(line 1\)"),
        ("[" * 500 + "]" * 500, r"^t nests lists and mappings more than 100 deep \(line 1\)"),
        ("[" * 100_000, r"^t (nests lists|is not valid YAML \(exceeded maximum nesting depth)"),  # libyaml's own limit
        ("{a: " * 101 + "1" + "}" * 101, r"^t nests lists and mappings more than 100 deep"),
        ("a: [1, 2\n", r"^t is not valid YAML \(.* at line 2, column 1\); fix the syntax$"),
        ("a: *nowhere\n", r"^t is not valid YAML \(found undefined alias"),
    ],
)
def test_recursion_depth_and_syntax_are_one_sentence(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_yaml(text, "t")


def test_a_file_is_checked_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:  # sparse: no disk space taken
        handle.truncate(safe_yaml.MAX_BYTES + 1)
    with pytest.raises(ConfigError, match=r"is 8,388,609 bytes, more than the 8,388,608"):
        read_yaml(big)
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_yaml(fifo)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 3\)"):
        read_yaml(binary)
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")


def test_jsonargparse_reads_values_and_configs_through_the_check(tmp_path: Path, marker: Path) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(parser_mode=register_cli_loader(), exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--overrides", type=dict[str, Any], default={})
    parser.add_argument("--name", type=str, default="")
    parsed = parser.parse_args(["--overrides", "{a: &x [1, 2], b: *x}", "--name", "run: 1"])
    assert parsed.overrides == {"a": [1, 2], "b": [1, 2]} and parsed.name == "run: 1"
    assert parser.parse_args(["--name", "[unclosed"]).name == "[unclosed"  # not YAML: still a plain string
    with pytest.raises(RefusedInParser, match=r"^the command-line value '\{l0: .* expands to more than 100,000"):
        parser.parse_args(["--overrides", laughs_flow()])
    config = tmp_path / "fit.yaml"
    config.write_text(f"name: {python_tag(marker)}\n")
    with pytest.raises(RefusedInParser, match=rf"^config file {re.escape(str(config))} line 1 has the tag"):
        parser.parse_args(["--config", str(config)])


# --- pickles ------------------------------------------------------------------------------------


def zoo_weights() -> OrderedDict[str, Any]:
    """What a detectron2 model-zoo .pkl holds: numpy arrays of several dtypes and layouts."""
    return OrderedDict(
        [
            ("backbone.stem.conv1.weight", np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)),
            ("backbone.fortran", np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))),
            ("roi_heads.classes", np.arange(5, dtype=np.int64)),
            ("empty", np.zeros((0, 4), dtype=np.float32)),
            ("scalar", np.array(2.5, dtype=np.float32)),
        ]
    )


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_detectron2_model_zoo_pickle_loads_as_it_was_written(tmp_path: Path, protocol: int) -> None:
    from detlit.model.weights import read_checkpoint

    written = {"model": zoo_weights(), "__author__": "Detectron2 Model Zoo", "extra": {1, 2}, "raw": b""}
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps(written, protocol=protocol))
    loaded = read_checkpoint(path)
    assert loaded["__author__"] == "Detectron2 Model Zoo" and "matching_heuristics" not in loaded
    assert loaded["extra"] == {1, 2} and loaded["raw"] == b""
    assert list(loaded["model"]) == list(written["model"])
    for key, array in written["model"].items():
        got = loaded["model"][key]
        assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array), key
    assert loaded["model"]["backbone.fortran"].flags["F_CONTIGUOUS"]


def test_a_detectron1_pickle_is_converted_as_detectron2_converts_it(tmp_path: Path) -> None:
    from detlit.model.weights import read_checkpoint

    blobs = {"conv1_w": np.ones((2, 3), np.float32), "conv1_w_momentum": np.zeros((2, 3), np.float32)}
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs, "cfg": "a config"}, protocol=2))
    loaded = read_checkpoint(path)
    assert loaded["__author__"] == "Caffe2" and loaded["matching_heuristics"] is True
    assert list(loaded["model"]) == ["conv1_w"] and np.array_equal(loaded["model"]["conv1_w"], blobs["conv1_w"])
    path.write_bytes(pickle.dumps({"res2_w": np.ones(3, np.float32), "res2_w_momentum": np.ones(3, np.float32)}))
    assert list(read_checkpoint(path)["model"]) == ["res2_w"]  # an ImageNet model: weights at the top


def test_torch_weights_are_read_weights_only_in_detectron2_s_formats(tmp_path: Path, marker: Path) -> None:
    from detlit.model.weights import read_checkpoint

    state = {"stem.weight": torch.arange(6.0).reshape(2, 3), "bn.num_batches_tracked": torch.tensor(7)}
    torch.save({"model_state": state}, tmp_path / "pycls.pyth")
    pycls = read_checkpoint(tmp_path / "pycls.pyth")
    assert pycls["__author__"] == "pycls" and list(pycls["model"]) == ["stem.weight"]
    assert torch.equal(pycls["model"]["stem.weight"], state["stem.weight"])
    torch.save(state, tmp_path / "plain.pth")
    assert list(read_checkpoint(tmp_path / "plain.pth")["model"]) == list(state)
    torch.save({"model": state, "code": RunsCommand(f"touch {marker}")}, tmp_path / "code.pth")
    with pytest.raises(WeightsError, match=r"could not read weights from .*code\.pth \(UnpicklingError: Weights"):
        read_checkpoint(tmp_path / "code.pth")


def test_a_pth_zip_bomb_is_refused_before_torch_inflates_it(tmp_path: Path) -> None:
    from detlit.model.weights import read_checkpoint

    from .corpus_resources import write_zip_bomb

    torch.save({"model": {"w": torch.ones(64)}}, tmp_path / "small.pth")
    bomb = write_zip_bomb(tmp_path / "small.pth", tmp_path / "bomb.pth", size=256 * 2**20)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(WeightsError, match=r"^model.weights .*bomb\.pth is .* its archive members declare 268"):
        read_checkpoint(bomb)


@pytest.mark.parametrize(
    ("payload", "asks_for"),
    [
        (lambda m: RunsCommand(f"touch {m}"), r"(posix|os)\.system"),
        (lambda m: EvalOf(f"open({str(m)!r}, 'w')"), r"builtins\.eval"),
        (lambda m: functools.partial(os.system, f"touch {m}"), r"functools\.partial"),
        (lambda m: np.load, r"numpy\.load"),
    ],
)
def test_a_pickle_that_asks_for_anything_else_is_refused_naming_it(
    tmp_path: Path, marker: Path, payload: Any, asks_for: str
) -> None:
    from detlit.model.weights import read_checkpoint

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.ones(2)}, "__author__": "x", "hook": payload(marker)}, 2))
    with pytest.raises(WeightsError) as caught:
        read_checkpoint(path)
    assert re.match(
        rf"weights file {re.escape(str(path))} asks for {asks_for}, which a weights file never needs", str(caught.value)
    )


class EvalOf:
    def __init__(self, text: str):
        self.text = text

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return eval, (self.text,)


class Placeholder:
    """Pickles as numpy's array placeholder, with a shape that would allocate what it says."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (10**12,), b"b")


class NewArray:
    """Pickles as a direct call of ``numpy.ndarray(shape)``."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return np.ndarray, ((10**12,),)


class ManyBytes:
    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return bytearray, (10**12,)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (Placeholder(), r"an array placeholder of shape \(1000000000000,\)"),
        (ManyBytes(), "bytearray of a int"),
        (NewArray(), r"a call of numpy\.ndarray"),
    ],
)
def test_admitted_names_cannot_allocate_what_the_file_says(tmp_path: Path, payload: Any, reason: str) -> None:
    from detlit.model.weights import read_checkpoint

    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": payload}, "__author__": "x"}, protocol=2))
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match=rf"\(UnpicklingError: {reason}"):
            read_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak


def test_bytes_are_read_only_as_latin_1(tmp_path: Path) -> None:
    path = tmp_path / "codec.pkl"
    # _codecs.encode("abc", "zlib"), as a pickle writes a call by hand
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(pickle.UnpicklingError, match="_codecs.encode to 'zlib'"):
        load_pickle(path)
    path.write_bytes(pickle.dumps(b"\x00\xffweights", protocol=2))
    assert load_pickle(path) == b"\x00\xffweights"


def test_weights_that_are_no_arrays_are_one_sentence(tmp_path: Path) -> None:
    from detlit.model.weights import read_checkpoint

    path = tmp_path / "names.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": "not an array"}, "__author__": "x"}))
    with pytest.raises(WeightsError, match=r"holds a str at 'w', where weights are arrays or tensors"):
        read_checkpoint(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(WeightsError, match=r"\(ValueError: it holds a list, not a mapping of weights\)"):
        read_checkpoint(path)


@pytest.fixture
def weights_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path/served``; downloads are cached under tmp_path."""
    served = tmp_path / "served"
    served.mkdir()
    monkeypatch.setenv("DETLIT_WEIGHTS_DIR", str(tmp_path / "cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_weights_over_http_are_read_by_the_restricted_unpickler(weights_server: tuple[str, Path], marker: Path) -> None:
    from detlit.model.weights import load_pretrained

    from .conftest import tiny_module

    url, served = weights_server
    donor = tiny_module().model.state_dict()
    written = {k: (v.numpy() + 1.0).astype(v.numpy().dtype) for k, v in donor.items()}
    (served / "good.pkl").write_bytes(pickle.dumps({"model": written, "__author__": "test server"}, protocol=2))
    (served / "evil.pkl").write_bytes(
        pickle.dumps({"model": {"w": RunsCommand(f"touch {marker}")}, "__author__": "x"}, protocol=2)
    )
    model = tiny_module().model
    report = load_pretrained(model, f"{url}/good.pkl")
    assert report == {"reinitialised": [], "missing": [], "unexpected": []}
    for key, value in model.state_dict().items():
        assert np.array_equal(value.numpy(), written[key]), key
    with pytest.raises(WeightsError, match=r"weights file .*evil\.pkl asks for (posix|os)\.system"):
        load_pretrained(tiny_module().model, f"{url}/evil.pkl")


# --- detectron2 configs (model.config_name) -----------------------------------------------------


def test_model_zoo_names_stay_inside_the_model_zoo() -> None:
    from detlit.compat import MODEL_ZOO_CONFIGS, find_model_zoo_config

    inside = find_model_zoo_config("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml")
    assert inside == (MODEL_ZOO_CONFIGS / "COCO-Detection" / "faster_rcnn_R_50_FPN_3x.yaml").resolve()
    assert find_model_zoo_config("COCO-Detection/../Base-RCNN-FPN.yaml") == (MODEL_ZOO_CONFIGS / "Base-RCNN-FPN.yaml")
    assert (MODEL_ZOO_CONFIGS.parent / "__init__.py").is_file()
    assert find_model_zoo_config("../__init__.py") is None  # a file, but outside the folder
    assert find_model_zoo_config(str(inside)) is None  # absolute: a path, not a model-zoo name


def test_every_menu_config_merges_exactly_as_detectron2_merges_it() -> None:
    from detlit.compat import get_cfg, model_zoo_config_path
    from detlit.model.config import MENU, merge_config_file

    for name in MENU:
        ours, theirs = get_cfg(), get_cfg()
        merge_config_file(ours, name)
        theirs.merge_from_file(str(model_zoo_config_path(name)))  # the model zoo's own files: trusted here
        assert ours == theirs, name
    retinanet = get_cfg()
    merge_config_file(retinanet, "COCO-Detection/retinanet_R_50_FPN_3x.yaml")
    assert retinanet.MODEL.ANCHOR_GENERATOR.SIZES[1] == [64, 64 * 2 ** (1 / 3), 64 * 2 ** (2 / 3)]


def test_a_user_config_file_with_bases_merges_as_detectron2_merges_it(tmp_path: Path) -> None:
    from detlit.compat import MODEL_ZOO_CONFIGS, get_cfg
    from detlit.model.config import merge_config_file

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "mine.yaml").write_text(
        f"_BASE_: {MODEL_ZOO_CONFIGS / 'COCO-Detection' / 'faster_rcnn_R_50_FPN_1x.yaml'}\nMODEL:\n  RESNETS:\n"
        "    DEPTH: 101\n"
    )
    (tmp_path / "top.yaml").write_text("_BASE_: [base/mine.yaml]\nSOLVER:\n  BASE_LR: 0.5\n")
    (tmp_path / "old.yaml").write_text("VERSION: 1\nMODEL:\n  RPN:\n    HEAD_NAME: StandardRPNHead\n")
    for name in ("top.yaml", "old.yaml"):
        ours, theirs = get_cfg(), get_cfg()
        merge_config_file(ours, str(tmp_path / name))
        theirs.merge_from_file(str(tmp_path / name))  # files written here, without tags
        assert ours == theirs, name
    assert ours.MODEL.RPN.HEAD_NAME == "StandardRPNHead"  # renamed from v1's RPN_HEAD.NAME by the upgrade
    merged = get_cfg()
    merge_config_file(merged, str(tmp_path / "top.yaml"))
    assert (merged.MODEL.RESNETS.DEPTH, merged.SOLVER.BASE_LR, merged.MODEL.META_ARCHITECTURE) == (
        101,
        0.5,
        "GeneralizedRCNN",
    )


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"a.yaml": "_BASE_: PYTHON\n"}, r"a\.yaml: base file .*evil\.yaml line 2 has the tag !!python/object"),
        ({"a.yaml": "_BASE_: https://example.com/Base.yaml\n"}, r"_BASE_ https://example\.com/Base\.yaml is a URL"),
        ({"a.yaml": "_BASE_: b.yaml\n", "b.yaml": "_BASE_: a.yaml\n"}, "leads back to a file that bases itself on it"),
        ({"a.yaml": "_BASE_: missing.yaml\n"}, r"its _BASE_ .*missing\.yaml does not exist"),
        ({"a.yaml": "_BASE_: 3\n"}, "_BASE_ 3 is not a file name"),
        ({"a.yaml": "- 1\n"}, r"is not a detectron2 config \(it holds a list, not a mapping of keys\)"),
        ({"a.yaml": "MODEL:\n  WEIGHTS: !!binary aGk=\n"}, "sets MODEL.WEIGHTS to a bytes"),
        ({"a.yaml": "MODEL:\n  RESNETS:\n    DEPTH: fifty\n"}, r"does not fit detectron2's config \(Type mismatch"),
        ({"a.yaml": "VERSION: 9\n"}, "has VERSION 9; detectron2 configs are versions 0 to 2"),
        ({"a.yaml": "model:\n  config_name: x\n"}, r"is not a detectron2 config \(it has key 'model', which"),
        ({"a.yaml": "MODEL:\n  NO_SUCH: 1\n"}, r"\(it has key 'MODEL\.NO_SUCH', which detectron2 does not know\)"),
    ],
)
def test_config_files_that_cannot_be_merged_are_one_sentence(
    tmp_path: Path, marker: Path, files: dict[str, str], expected: str
) -> None:
    from detlit.model.config import build_d2_config

    (tmp_path / "evil.yaml").write_text(f"MODEL:\n  WEIGHTS: {python_tag(marker)}\n")
    for name, text in files.items():
        (tmp_path / name).write_text(text.replace("PYTHON", str(tmp_path / "evil.yaml")))
    with pytest.raises(ConfigError, match=expected) as caught:
        build_d2_config(str(tmp_path / "a.yaml"), num_classes=3)
    assert str(caught.value).startswith(f"model.config_name {tmp_path / 'a.yaml'}") and "\n" not in str(caught.value)


def test_a_chain_of_bases_is_bounded(tmp_path: Path) -> None:
    from detlit.model.config import MAX_BASES, build_d2_config

    for n in range(MAX_BASES + 2):
        (tmp_path / f"c{n}.yaml").write_text(f"_BASE_: c{n + 1}.yaml\n")
    (tmp_path / f"c{MAX_BASES + 2}.yaml").write_text("MODEL: {}\n")
    with pytest.raises(ConfigError, match=rf"more than {MAX_BASES} _BASE_ files one on another"):
        build_d2_config(str(tmp_path / "c0.yaml"))


# --- the other YAML readers -----------------------------------------------------------------------


def test_a_run_folder_s_config_with_a_tag_is_shown_not_built(tmp_path: Path, marker: Path) -> None:
    from detlit.reporting.run_reader import read_run

    (tmp_path / "config.yaml").write_text(f"trainer:\n  max_epochs: {python_tag(marker)}\n")
    (tmp_path / "hparams.yaml").write_text(laughs())
    run = read_run(tmp_path)
    assert run.config == {} and run.hparams == {} and run.config_text is not None
    assert run.config_note is not None and "has the tag !!python/object/apply:os.system" in run.config_note


def test_an_augmentation_list_given_as_text_is_read_safely(marker: Path) -> None:
    from detlit.data.transforms import unbuilt_steps

    assert "expands to more than 100,000 values" in unbuilt_steps(laughs_flow())
    assert "has the tag !!python/object/apply:os.system" in unbuilt_steps(f"[{python_tag(marker)}]")


def test_a_search_space_and_its_base_config_are_read_safely(tmp_path: Path, marker: Path) -> None:
    from detlit.training.tune import load_search

    path = tmp_path / "search.yaml"
    path.write_text(f"params:\n  model.lr: {python_tag(marker)}\n")
    with pytest.raises(ConfigError, match=rf"^search space {re.escape(str(path))} line 2 has the tag"):
        load_search(path)


# --- TorchScript ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_torchscript(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model's TorchScript export and its metadata, as detlit writes them (untrained weights)."""
    from detlit.deploy.export import write_model
    from detlit.inference.exported import ExportedModel, metadata_path
    from detlit.inference.facts import ModelFacts

    from .conftest import tiny_module

    module = tiny_module().eval()
    model = tmp_path_factory.mktemp("ts") / "tiny.torchscript"
    model.write_bytes(write_model(module.model, torch.zeros(3, 128, 160, dtype=torch.uint8), "torchscript").model)
    exported = ExportedModel.of(model.read_bytes(), "torchscript", model.name, ModelFacts.from_module(module))
    metadata_path(model).write_bytes(exported.to_bytes())
    return model


def test_a_tampered_torchscript_file_is_refused_before_any_of_it_runs(
    exported_torchscript: Path, tmp_path: Path, marker: Path
) -> None:
    from detlit.common.safe_torchscript import check_torchscript
    from detlit.inference.predictor import Predictor

    from .corpus_untrusted import tamper_torchscript, touching_statement

    check_torchscript(exported_torchscript)  # detlit's own export passes
    assert Predictor.load(exported_torchscript).predict([np.zeros((96, 128, 3), np.uint8)])[0] is not None
    touching = tmp_path / "touching.torchscript"
    tamper_torchscript(exported_torchscript, touching, touching_statement(marker))
    # The attack is real: torch itself loads the file and, called, creates the marker file.
    proof = tmp_path / "proof-it-runs"
    tamper_torchscript(exported_torchscript, tmp_path / "proof.torchscript", touching_statement(proof))
    torch.jit.load(str(tmp_path / "proof.torchscript"))(torch.zeros(3, 128, 160, dtype=torch.uint8))
    assert proof.exists()
    refused = r"line \d+ calls (torch\.\w+, )*torch\.from_file(, torch\.\w+)*, which a detector exported by detlit"
    with pytest.raises(WeightsError, match=refused):
        Predictor.load(touching)


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ('_evil = ops.aten.from_file("x", True, 1)', r"calls ops\.aten\.from_file"),
        ("_evil = torch.classes.some.Thing", r"calls torch\.classes\.some\.Thing"),
        ("_save = torch.save", r"calls torch\.save"),
        ("def __setstate__(self, state: int) -> None:", r"cannot be read|defines __setstate__"),
        ("((((", r"holds code that cannot be read \(SyntaxError\)"),
    ],
)
def test_torchscript_code_outside_a_detector_s_operators_is_refused(
    exported_torchscript: Path, tmp_path: Path, statement: str, message: str
) -> None:
    from detlit.common.safe_torchscript import check_torchscript

    from .corpus_untrusted import tamper_torchscript

    crafted = tmp_path / "crafted.torchscript"
    tamper_torchscript(exported_torchscript, crafted, statement)
    with pytest.raises(WeightsError, match=message):
        check_torchscript(crafted)


def test_a_torchscript_load_hook_is_refused(tmp_path: Path) -> None:
    from detlit.common.safe_torchscript import check_code

    code = b"class M(Module):\n  def __setstate__(self, state: Tuple[int]) -> None:\n    return None\n"
    with pytest.raises(WeightsError, match=r"line 2 defines __setstate__, which runs when the file is loaded"):
        check_code(code, "m.torchscript (code/__torch__.py)")
