"""A non-editable install carries every module and the prompts/ data, and the code finds them there.

The wheel is built from a copy of the working tree (the checkout itself gets no build/ folder),
offline and without build isolation (setuptools from this environment), then installed into a
fresh folder that a child interpreter puts first on its path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pipeline", "stages", "prompts", "pyproject.toml", "README.md")


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--disable-pip-version-check", "-q"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    _pip("wheel", "--no-build-isolation", "-w", str(root / "dist"), str(src), cwd=root)
    (wheel,) = (root / "dist").glob("dferclip-*.whl")
    return root, src, wheel


def _expected(src: Path) -> set[str]:
    """What the wheel must hold: every module, the model configs, and prompts/ as pipeline/_prompts/."""
    files = {p.relative_to(src).as_posix() for d in ("pipeline", "stages") for p in (src / d).rglob("*.py")}
    files |= {p.relative_to(src).as_posix() for p in (src / "pipeline" / "model" / "model_configs").glob("*.json")}
    # The shipped pretrained weights with their manifests, and pretraining's description set.
    weights = [p for p in (src / "pipeline" / "model" / "weights").glob("*") if p.suffix in (".pt", ".json")]
    files |= {p.relative_to(src).as_posix() for p in weights + list((src / "pipeline" / "pretrain").glob("*.yaml"))}
    prompts = [p for p in (src / "prompts").rglob("*") if p.is_file()]
    files |= {"pipeline/_prompts/" + p.relative_to(src / "prompts").as_posix() for p in prompts}
    return files


def test_the_wheel_holds_every_module_and_the_prompts(built):
    _root, src, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _expected(src)
    assert {
        "pipeline/_prompts/templates/visual_features.yaml",
        "pipeline/_prompts/descriptions/default-7.yaml",
        "pipeline/model/weights/dferclip-rn-micro-synth.pt",
        "pipeline/model/weights/dferclip-rn-micro-synth.json",
        "pipeline/pretrain/independent-7.yaml",
    } <= expected
    assert expected - names == set()


def test_the_sdist_holds_the_prompts(built):
    _root, src, _wheel = built
    # setuptools' own sdist command with the same pyproject.toml and manifest rules as a PEP 517
    # build, as an uncompressed tar: what goes in is the same (checked against a .tar.gz once),
    # and gzip at level 9 spends ~30 s on the 16 MB shipped weights, which this test is not about.
    done = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "sdist", "--formats=tar", "-d", "sd"],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (archive,) = (src / "sd").glob("dferclip-*.tar")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {p.relative_to(src).as_posix() for p in (src / "prompts").rglob("*.yaml")} <= names


def test_an_installed_wheel_finds_its_templates_and_description_sets(built):
    root, src, wheel = built
    site = root / "site"
    _pip("install", "--target", str(site), str(wheel), cwd=root)
    probe = """
import json
import pipeline
from pipeline.datasets import CLASSES_7, CLASSES_11
from pipeline.llm.prompts import PROMPTS_DIR, list_class_sets, list_templates, load_template
from pipeline.llm.sets import load_description_set, shipped_set_paths
print(json.dumps({
    "package": pipeline.__file__,
    "prompts": str(PROMPTS_DIR),
    "templates": list_templates(),
    "class_sets": list_class_sets(),
    "sets": sorted(shipped_set_paths()),
    "template_user": bool(load_template("visual_features").user),
    "default_7": len(load_description_set(None, list(CLASSES_7))),
    "default_11": len(load_description_set(None, list(CLASSES_11))),
}))
"""
    # -I: no PYTHONPATH, no user site, no current folder; the installed copy goes first on the path.
    code = f"import sys; sys.path.insert(0, {str(site)!r})\n" + probe
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["package"].startswith(str(site)), found  # the installed copy, not this checkout
    assert found["prompts"] == str(site / "pipeline" / "_prompts")
    assert found["templates"] == sorted(p.stem for p in (src / "prompts" / "templates").glob("*.yaml"))
    assert found["class_sets"] == sorted(p.stem for p in (src / "prompts" / "classes").glob("*.yaml"))
    assert found["sets"] == sorted(p.stem for p in (src / "prompts" / "descriptions").glob("*.yaml"))
    assert found["template_user"] and found["default_7"] == 7 and found["default_11"] == 11


def test_a_checkout_finds_the_prompts_beside_the_package():
    from pipeline.llm.prompts import PROMPTS_DIR

    assert PROMPTS_DIR == REPO / "prompts"
