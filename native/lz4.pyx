# cython: language_level=3, boundscheck=False, wraparound=False
"""LZ4 block decoding straight into the result buffer, with partial decoding.

EROFS needs ``LZ4_decompress_safe_partial`` (an extent may use only a prefix
of a pcluster's output), which the Python lz4 package does not expose, so
this module binds liblz4 directly.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from erofsfuse.erofs.errors import CorruptImage


cdef extern from "lz4.h" nogil:
    int LZ4_decompress_safe(const char *src, char *dst, int compressedSize, int dstCapacity)
    int LZ4_decompress_safe_partial(const char *src, char *dst, int srcSize, int targetOutputSize, int dstCapacity)


def decompress(const unsigned char[::1] src, Py_ssize_t outlen, bint partial, bint zero_padding=True):
    """Decode ``src`` (one pcluster) into exactly ``outlen`` bytes.

    With ``zero_padding`` the leading zero bytes that align the stream to the
    end of the pcluster are skipped. With ``partial`` the stream may hold
    more than ``outlen`` bytes; otherwise it must decode to exactly ``outlen``.
    """
    cdef Py_ssize_t margin = 0, n = src.shape[0]
    cdef int ret
    if zero_padding:
        while margin < n and src[margin] == 0:
            margin += 1
    if margin >= n:
        raise CorruptImage("LZ4 pcluster holds nothing but padding")
    out = PyBytes_FromStringAndSize(NULL, outlen)
    cdef char *dst = PyBytes_AS_STRING(out)
    cdef const char *start = <const char *>&src[margin]
    cdef int insize = <int>(n - margin), target = <int>outlen
    with nogil:
        if partial:
            ret = LZ4_decompress_safe_partial(start, dst, insize, target, target)
        else:
            ret = LZ4_decompress_safe(start, dst, insize, target)
    if ret < 0:  # liblz4 reports where in the input decoding failed as -(position) - 1
        raise CorruptImage(f"LZ4 stream is corrupt at input byte {margin - ret - 1}")
    if ret != outlen:
        raise CorruptImage(f"LZ4 stream decoded to {ret} bytes instead of {outlen}")
    return out
