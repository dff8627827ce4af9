"""Build the Cython hot paths in native/ as modules of the erofsfuse package.

The native code takes the on-disk format from ``erofsfuse/erofs/ondisk.py``:
``native/ondisk.pxd`` is generated from it here, before Cython runs.
"""

import importlib.util
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

NATIVE = Path(__file__).parent / "native"


def write_ondisk_declarations() -> None:
    """(Re)write native/ondisk.pxd from ondisk.py; unchanged text leaves the file alone, so nothing rebuilds."""
    spec = importlib.util.spec_from_file_location("ondisk", NATIVE.parent / "erofsfuse" / "erofs" / "ondisk.py")
    ondisk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ondisk)
    text = ondisk.cython_declarations()
    target = NATIVE / "ondisk.pxd"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


write_ondisk_declarations()
extensions = [
    Extension("erofsfuse.erofs._zmap", ["native/zmap.pyx"]),
    Extension("erofsfuse.erofs._dirents", ["native/dirents.pyx"]),
    Extension("erofsfuse.erofs._lz4", ["native/lz4.pyx"], libraries=["lz4"]),
    Extension("erofsfuse.erofs.inode", ["native/inode.pyx"]),
]

setup(
    ext_modules=cythonize(extensions, include_path=[str(NATIVE)], compiler_directives={"language_level": "3"})
)
