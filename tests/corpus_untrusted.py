"""The corpus of bad inputs, area: Files that would run code: pickles, yaml tags, config names from checkpoints.

Every crafted file here would create ``workspace.marker`` if detlit ran its code: a pickle whose
``__reduce__`` calls ``os.system``, YAML with ``!!python/object/apply:os.system``, and a checkpoint
whose ``hyper_parameters.config_name`` names that YAML. Beside them, "billion laughs" YAML (nine
levels of ten aliases: 10**9 strings once expanded, in less than a kilobyte) in each place a YAML
reaches detlit, a detlit config given as ``model.config_name``, and a ``.pkl`` that is no pickle.
An OpenVINO export, copied and changed as someone who edits a shared export would leave it: its graph
declaring a "billion laughs" DTD, its weights another export's, missing, or not recorded, a precision
detlit does not run.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import torch

from .conftest import REPO
from .corpus import Case, Workspace, args, fit

SERVE_PORT = 18767  # free on the test machines; serve must stop before it would listen


class RunsCommand:
    """Pickles as a call of ``os.system(command)``: unpickling it runs the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def folder(workspace: Workspace) -> Path:
    return workspace.root / "untrusted"


def laughs(levels: int = 9, indent: str = "") -> str:
    """A "billion laughs" YAML mapping: each anchor repeats the one before ten times."""
    lines = [f'{indent}l0: &l0 "{"lol" * 3}"']
    lines += [f"{indent}l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def laughs_flow(levels: int = 9) -> str:
    """The same mapping on one line, as a command-line value."""
    return "{" + ", ".join(line for line in laughs(levels).splitlines()) + "}"


def python_tag(marker: Path) -> str:
    """A YAML value that runs a shell command when detectron2's (unsafe) loader builds it."""
    return f'!!python/object/apply:os.system ["touch {marker}"]'


def tamper_torchscript(model: Path, out: Path, statement: str) -> None:
    """A copy of an exported TorchScript ``model`` whose traced ``forward`` first runs ``statement``,
    with its metadata json updated to the copy (sha256 and size), as someone who edits a shared
    export would leave it."""
    import hashlib
    import json
    import zipfile

    from detlit.inference.exported import metadata_path

    with zipfile.ZipFile(model) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            # The traced wrapper's code (a mangled file name when the process traced one before).
            if item.filename.endswith(".py") and b"class TracedDetector(Module)" in data:
                head, sep, rest = data.decode().partition("    model = self.model\n")
                assert sep, "the traced forward starts with model = self.model"
                data = (head + f"    {statement}\n" + sep + rest).encode()
            target.writestr(item, data)
    document = json.loads(metadata_path(model).read_text())
    written = out.read_bytes()
    document.update(file=out.name, file_sha256=hashlib.sha256(written).hexdigest(), file_bytes=len(written))
    metadata_path(out).write_text(json.dumps(document))


def touching_statement(path: Path) -> str:
    """TorchScript that creates ``path`` (``from_file`` with ``shared`` maps the file, creating it), its
    result added to the input image so that the compiler keeps it."""
    return f'image = torch.add(image, torch.mul(torch.sum(torch.from_file("{path}", True, 1, dtype=0)), 0))'


def touching_torchscript(workspace: Workspace) -> Path:
    """The workspace's checkpoint exported to TorchScript, its code changed to create the marker
    file (``torch.from_file(..., shared=True)`` creates the file it maps) when the model is called."""
    from detlit.deploy.export import export

    model = export(workspace.ckpt, "torchscript", out=folder(workspace) / "export")
    touching = folder(workspace) / "touches-files.torchscript"
    tamper_torchscript(model, touching, touching_statement(workspace.marker))
    return touching


LAUGHS_DTD = (
    b'<!DOCTYPE net [<!ENTITY l0 "lol">'
    + b"".join(f'<!ENTITY l{n} "{f"&l{n - 1};" * 10}">'.encode() for n in range(1, 10))
    + b"]>\n"
)
"""A DTD whose entity ``l9`` expands to 10**9 "lol"s, as an XML graph could declare it."""


def copy_export(model: Path, out: Path) -> Path:
    """A copy of an OpenVINO export's three files (graph, weights, metadata) in ``out``; the copy's graph."""
    from detlit.inference.exported import metadata_path, weights_path

    out.mkdir(parents=True, exist_ok=True)
    for path in (model, weights_path(model), metadata_path(model)):
        shutil.copyfile(path, out / path.name)
    return out / model.name


def with_metadata(model: Path, **changes: object) -> None:
    """An exported model's metadata with ``changes`` (a key given None is removed)."""
    import json

    from detlit.inference.exported import metadata_path

    document = json.loads(metadata_path(model).read_text())
    document.update(changes)
    metadata_path(model).write_text(json.dumps({k: v for k, v in document.items() if v is not None}))


def with_graph_head(model: Path, head: bytes) -> None:
    """``head`` put after an OpenVINO graph's XML declaration, its metadata updated to the changed
    graph (sha256 and size), as someone who edits a shared export would leave it."""
    from detlit.common.files import sha256_file

    declaration, rest = model.read_bytes().split(b"\n", 1)
    model.write_bytes(declaration + b"\n" + head + rest)
    with_metadata(model, file_sha256=sha256_file(model), file_bytes=model.stat().st_size)


def blind_checkpoint(source: Path, out: Path) -> Path:
    """A copy of a checkpoint whose box classifier prefers the background by 30 logits: every class
    scores below 1e-12, so the model finds nothing in any image (and its weights are its own)."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    state["state_dict"]["model.roi_heads.box_predictor.cls_score.bias"][-1] += 30.0
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def openvino_exports(workspace: Workspace) -> None:
    """The workspace's checkpoint exported to OpenVINO (``untrusted/openvino/model.xml``) and crafted
    copies of that export, each in its own folder (``untrusted/openvino-<what>/model.xml``)."""
    from detlit.deploy.export import export
    from detlit.inference.exported import weights_path

    here = folder(workspace)
    model = export(workspace.ckpt, "openvino", out=here / "openvino")
    blind = blind_checkpoint(workspace.ckpt, here / "blind" / workspace.ckpt.name)
    other = export(blind, "openvino", out=here / "blind")
    with_graph_head(copy_export(model, here / "openvino-dtd"), LAUGHS_DTD)
    shutil.copyfile(weights_path(other), weights_path(copy_export(model, here / "openvino-other-weights")))
    weights_path(copy_export(model, here / "openvino-no-weights")).unlink()
    with_metadata(copy_export(model, here / "openvino-no-weights-sha256"), weights_sha256=None)
    with_metadata(copy_export(model, here / "openvino-int4"), precision="int4")


def prepare(workspace: Workspace) -> None:
    """Write the files this area's cases name into ``workspace.root``."""
    here = folder(workspace)
    here.mkdir()
    touching_torchscript(workspace)
    openvino_exports(workspace)
    marker = workspace.marker
    (here / "runs-code.pkl").write_bytes(pickle.dumps({"model": RunsCommand(f"touch {marker}")}, protocol=2))
    (here / "not-a-pickle.pkl").write_text("these are not weights\n")
    (here / "runs-code.yaml").write_text(f"MODEL:\n  WEIGHTS: {python_tag(marker)}\n")
    checkpoint = torch.load(workspace.ckpt, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["config_name"] = str(here / "runs-code.yaml")
    torch.save(checkpoint, here / "runs-code-config.ckpt")
    (here / "laughs-config.yaml").write_text("model:\n  overrides:\n" + laughs(indent="    "))
    (here / "python-tag-config.yaml").write_text(f"trainer:\n  max_epochs: {python_tag(marker)}\n")
    (here / "recursive-config.yaml").write_text("trainer:\n  callbacks: &loop [*loop]\n")
    (here / "laughs-search.yaml").write_text("params:\n" + laughs(indent="  "))
    shutil.copy(REPO / "configs" / "sample_cpu.yaml", here / "detlit-config.yaml")


CODE_RAN_TAG = r"has the tag !!python/object/apply:os\.system, which would build a Python object"
OPENVINO = "{root}/untrusted/openvino-%s/model.xml"
DTD_SENTENCE = (
    r"openvino-dtd/model\.xml line 2 declares a DTD "
    r"\(<!DOCTYPE \.\.\.>\)"
)
OTHER_WEIGHTS_SENTENCE = (
    r"openvino-other-weights/model\.bin is not the weights file its metadata .*model\.xml\.json was written with "
    r"\(their sha256 differ\): the two come from different exports"
)
PICKLE = "{root}/untrusted/runs-code.pkl"
CKPT = "{root}/untrusted/runs-code-config.ckpt"

CASES: list[Case] = [
    Case(
        "weights pickle that would run code",
        "fit",
        fit(f"--model.weights={PICKLE}"),
        r"asks for (posix|os|nt)\.system, which a weights file never needs",
    ),
    Case(
        "weights .pkl that is not a pickle",
        "fit",
        fit("--model.weights={root}/untrusted/not-a-pickle.pkl"),
        r"could not read weights from .*not-a-pickle\.pkl \(UnpicklingError",
    ),
    Case(
        "detectron2 config with a Python tag",
        "fit",
        fit("--model.config_name={root}/untrusted/runs-code.yaml"),
        CODE_RAN_TAG,
    ),
    Case(
        "detlit config as model.config_name",
        "fit",
        fit("--model.config_name={root}/untrusted/detlit-config.yaml"),
        r"is not a detectron2 config \(it has key '\w+', which detectron2 does not know\).*a detlit config goes to "
        "--config",
    ),
    Case(
        "config name that leaves the model zoo",
        "fit",
        fit("--model.config_name=../../../../../../../../../no-such-folder/faster_rcnn.yaml"),
        "no detectron2 model-zoo config of that name",
    ),
    Case(
        "fit config with a Python tag",
        "fit",
        fit("--config={root}/untrusted/python-tag-config.yaml"),
        r"config file .*python-tag-config\.yaml line 2 " + CODE_RAN_TAG,
    ),
    Case(
        "billion laughs in a fit config",
        "fit",
        fit("--config={root}/untrusted/laughs-config.yaml"),
        r"config file .*laughs-config\.yaml expands to more than 100,000 values",
    ),
    Case(
        "billion laughs in model.overrides",
        "fit",
        fit(f"--model.overrides={laughs_flow()}".replace("{", "{{").replace("}", "}}")),
        r"the command-line value .* expands to more than 100,000 values",
    ),
    Case(
        "fit config with a recursive anchor",
        "fit",
        fit("--config={root}/untrusted/recursive-config.yaml"),
        r"recursive-config\.yaml uses anchor &loop inside itself",
    ),
    Case(
        "billion laughs in a search space",
        "tune",
        args("--config", "{root}/search.yaml", "--search", "{root}/untrusted/laughs-search.yaml", "--trials", "1"),
        r"search space .*laughs-search\.yaml expands to more than 100,000 values",
    ),
    Case(
        "checkpoint naming a config with a Python tag",
        "predict",
        args("--ckpt", CKPT, "{sample}/val", "--out", "{root}/untrusted-predict"),
        CODE_RAN_TAG,
    ),
    Case(
        "evaluate a checkpoint naming a config with a Python tag",
        "evaluate",
        args("--ckpt", CKPT, "--json", "{sample}/val.json", "--images", "{sample}/val", "--out", "{root}/untrusted-e"),
        CODE_RAN_TAG,
    ),
    Case(
        "export a checkpoint naming a config with a Python tag",
        "export",
        args("--ckpt", CKPT, "--format", "onnx", "--out", "{root}/untrusted-export"),
        CODE_RAN_TAG,
    ),
    Case(
        "predict with a TorchScript model that would touch files",
        "predict",
        args("--model", "{root}/untrusted/touches-files.torchscript", "{sample}/val", "--out", "{root}/ts-out"),
        r"touches-files\.torchscript \(.*\) line \d+ calls .*torch\.from_file.*, which a detector exported by detlit",
    ),
    Case(
        "serve a checkpoint naming a config with a Python tag",
        "serve",
        args("--ckpt", CKPT, "--port", str(SERVE_PORT)),
        CODE_RAN_TAG,
    ),
    # --- OpenVINO exports -----------------------------------------------------------------------
    Case(
        "OpenVINO graph declaring a DTD",
        "predict",
        args("--model", OPENVINO % "dtd", "{sample}/val", "--out", "{root}/ov-out"),
        DTD_SENTENCE,
    ),
    Case(
        "serve an OpenVINO graph declaring a DTD",
        "serve",
        args("--model", OPENVINO % "dtd", "--port", str(SERVE_PORT)),
        DTD_SENTENCE,
    ),
    Case(
        "OpenVINO graph beside another export's weights",
        "predict",
        args("--model", OPENVINO % "other-weights", "{sample}/val", "--out", "{root}/ov-out"),
        OTHER_WEIGHTS_SENTENCE,
    ),
    Case(
        "evaluate an OpenVINO graph beside another export's weights",
        "evaluate",
        args("--model", OPENVINO % "other-weights", "--json", "{sample}/val.json", "--images", "{sample}/val"),
        OTHER_WEIGHTS_SENTENCE,
    ),
    Case(
        "OpenVINO graph without its weights file",
        "predict",
        args("--model", OPENVINO % "no-weights", "{sample}/val", "--out", "{root}/ov-out"),
        r"the weights file of .*/openvino-no-weights/model\.xml, .*/model\.bin, does not exist",
    ),
    Case(
        "OpenVINO metadata without the weights' sha256",
        "predict",
        args("--model", OPENVINO % "no-weights-sha256", "{sample}/val", "--out", "{root}/ov-out"),
        r"model\.xml\.json lacks the weights file's sha256 and size \(weights_sha256, weights_bytes\)",
    ),
    Case(
        "OpenVINO metadata naming precision int4",
        "predict",
        args("--model", OPENVINO % "int4", "{sample}/val", "--out", "{root}/ov-out"),
        r"model\.xml\.json names precision 'int4'; detlit runs fp32, int8, fp16: export the model again",
    ),
    Case(
        "OpenVINO model on a CUDA device",
        "predict",
        args("--model", "{root}/untrusted/openvino/model.xml", "{sample}/val", "--device", "cuda", "--out", "{root}/o"),
        # where torch sees a GPU, the model's own sentence; else that there is none
        r"OpenVINO model .*model\.xml runs on the CPU here; use --device cpu|torch sees no CUDA GPU here",
    ),
]
