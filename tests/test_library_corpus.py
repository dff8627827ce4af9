"""The library reads every corpus image exactly as the kernel's manifest shows it."""

from __future__ import annotations

import pytest

from erofsfuse.erofs.image import ErofsImage

from . import corpus
from .trees import describe_image, diff_trees


@pytest.mark.parametrize("name", corpus.image_names())
def test_library_matches_manifest(name):
    m = corpus.manifest(name)
    with ErofsImage(corpus.image_path(name), corpus.device_paths(name)) as img:
        assert img.sb.root_nid == int(m["kernel_messages"][-1].rsplit("nid ", 1)[1].rstrip("."))
        problems = diff_trees(m["entries"], describe_image(img))
    assert not problems, "\n".join(problems)
