"""Build the Cython hot paths in native/ as modules of the erofsfuse package."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("erofsfuse._zmap", ["native/zmap.pyx"]),
    Extension("erofsfuse._dirents", ["native/dirents.pyx"]),
    Extension("erofsfuse._lz4", ["native/lz4.pyx"], libraries=["lz4"]),
    Extension("erofsfuse.inode", ["native/inode.pyx"]),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
