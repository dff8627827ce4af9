"""Build the Cython hot paths in native/ as modules of the erofsfuse package."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("erofsfuse.erofs._zmap", ["native/zmap.pyx"]),
    Extension("erofsfuse.erofs._dirents", ["native/dirents.pyx"]),
    Extension("erofsfuse.erofs._lz4", ["native/lz4.pyx"], libraries=["lz4"]),
    Extension("erofsfuse.erofs.inode", ["native/inode.pyx"]),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
