#pragma once
#include <zlib.h>

// deflateInit2/inflateInit2 are macros (they pass ZLIB_VERSION and sizeof(z_stream)).
static inline int czlib_deflate_init2(z_stream *s, int level, int window_bits, int mem_level) {
    return deflateInit2(s, level, Z_DEFLATED, window_bits, mem_level, Z_DEFAULT_STRATEGY);
}
static inline int czlib_inflate_init2(z_stream *s, int window_bits) {
    return inflateInit2(s, window_bits);
}
